"""Latency, throughput, peak memory and bf16 accuracy: pvt_mm vs mmdet's built-in and timm.

    # backbones (ours, mmdet's PyramidVisionTransformer(V2), timm's pvt_v2_*)
    python tools/benchmark.py --arch small b2 b2_li --shape 224 --shape 800 1333 --mode fp32 bf16
    # a whole detector: our config vs the same config with mmdet's built-in backbone
    python tools/benchmark.py --config configs/retinanet_pvt_s_fpn_1x_coco.py --shape 512 \\
        --batch-size 2 --mode train --with-cp
    # deployment: + ONNX Runtime and OpenVINO on our exported graph, and the matmul peak share
    python tools/benchmark.py --arch small b2 b2_li --shape 800 1333 --mode fp32 bf16 --runtimes
    # a shared machine: each model also timed beside one busy neighbour process
    python tools/benchmark.py --arch b2 --shape 512 --mode fp32 --runtimes --contention

Compared models run alternately in one process (median latency after warm-up); peak memory is
measured for each model and mode in a fresh subprocess. bf16 / fp16 rows also give the cosine
similarity of each backbone stage output with fp32 and the max abs difference. The machine's
load is recorded before, during and after the run; a run on a busy machine says so (a warning
in the output and in the reports). See pvt_mm/analysis/benchmark.py.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from contextlib import ExitStack
from pathlib import Path

LOAD_AT_START = os.getloadavg()  # before the imports below (torch, mmdet) add their own load

import pvt_mm._quiet  # noqa: F401,E402  first: drops the pkg_resources deprecation noise

from mmengine.config import DictAction  # noqa: E402

from pvt_mm.analysis.benchmark import (MODES, backbone_candidates,  # noqa: E402
                                       check_modes, config_candidates, peak_lines,
                                       run_benchmark)
from pvt_mm.analysis.contention import contention_lines  # noqa: E402
from pvt_mm.analysis.deploy_bench import runtime_candidates  # noqa: E402
from pvt_mm.analysis.machine_load import (NEIGHBOUR_MAX_S, BusyNeighbour,  # noqa: E402
                                          LoadMonitor, LoadReport)
from pvt_mm.analysis.models import check_shape  # noqa: E402
from pvt_mm.analysis.report import (machine_info,  # noqa: E402
                                    markdown_report, ratio_lines, save_plot, text_table,
                                    write_markdown)

PEERS = ('mmdet', 'timm')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--arch', nargs='+', help='backbone variants (tiny..large, b0..b5, b2_li)')
    src.add_argument('--config', nargs='+', help='mmdet / mmseg config files')
    p.add_argument('--shape', type=int, nargs='+', action='append',
                   help='input size H [W]; repeat for several (default 224)')
    p.add_argument('--mode', nargs='+', default=['fp32', 'bf16'], choices=MODES,
                   help='fp32 / bf16 / fp16 (CUDA) inference, train step (default fp32 bf16)')
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--runs', type=int, default=10, help='timed runs per model (median)')
    p.add_argument('--warmup', type=int, default=2, help='untimed runs per model first')
    p.add_argument('--threads', type=int, default=None,
                   help='CPU threads of every model (pvt_mm, peers, runtimes); default: each '
                        "library's own (pvt_mm: from the CPUs the process may use and the "
                        "load, see pvt_mm/models/fast/threads.py)")
    p.add_argument('--device', default='cpu', help='cpu or cuda[:i]')
    p.add_argument('--peers', nargs='*', default=list(PEERS), choices=PEERS,
                   help='implementations to compare with (default: mmdet timm; none: ours only)')
    p.add_argument('--runtimes', action='store_true',
                   help='also run ONNX Runtime and OpenVINO on the graph tools/export_onnx.py '
                        'writes (fp32 / bf16), and report every model\'s share of the '
                        'same-process 4096x4096 matmul peak')
    p.add_argument('--end2end', action='store_true',
                   help='with --config: the whole model, image in -> detections out, eager vs '
                        'the end-to-end graph (with --runtimes: ONNX Runtime, OpenVINO), and the '
                        'share outside the backbone (pvt_mm/analysis/end2end_bench.py)')
    p.add_argument('--contention', type=float, nargs='?', const=NEIGHBOUR_MAX_S,
                   metavar='MAX_S',
                   help='also time every model while one busy neighbour process spins on a '
                        'CPU (started and stopped by this tool, killed on exit; it ends by '
                        f'itself after MAX_S s, default {NEIGHBOUR_MAX_S:.0f})')
    p.add_argument('--with-cp', action='store_true',
                   help='also time our model with activation checkpointing (train mode)')
    p.add_argument('--memory-modes', nargs='*', choices=MODES, default=None,
                   help='modes whose peak memory is measured (default: all; none: skip)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    p.add_argument('--markdown', type=Path, help='write the report as Markdown here')
    p.add_argument('--section', help='with --markdown: replace only the block between '
                                     '<!-- benchmark:SECTION --> and <!-- /benchmark:SECTION -->')
    p.add_argument('--plot', type=Path, help='write a bar plot (PNG) here')
    args = p.parse_args(argv)
    try:
        args.shape = [check_shape(s) for s in args.shape or [[224]]]
    except ValueError as e:
        p.error(str(e))
    if args.device.startswith('cuda'):
        import torch
        if not torch.cuda.is_available():
            p.error('--device cuda given but CUDA is not available')
    elif args.device != 'cpu':
        p.error(f'--device must be cpu or cuda[:i], got {args.device!r}')
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.end2end:
        if not args.config:
            raise SystemExit('--end2end needs --config')
        from pvt_mm.analysis.end2end_bench import end2end_main
        end2end_main(args.config, args.shape, args.mode, args.runtimes, args.runs, args.warmup,
                     args.threads)
        return
    start = time.time()
    try:
        check_modes(args.mode, args.device)
        if args.arch:
            candidates = [c for a in args.arch
                          for c in backbone_candidates(a, args.peers, args.with_cp)]
        else:
            candidates = [c for cfg in args.config for c in config_candidates(
                cfg, args.cfg_options, args.peers, args.with_cp)]
        if args.runtimes:
            if args.device != 'cpu':
                raise ValueError('--runtimes runs ONNX Runtime and OpenVINO on CPU only')
            candidates += [r for c in candidates if c.role == 'ours' and not c.with_cp
                           for r in runtime_candidates(c)]
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None
    info = machine_info(args.threads or "each library's default", args.device)
    del info['load average at the start (1/5/15 min)']  # the load check below says more
    with ExitStack() as stack:
        neighbour = None
        if args.contention:
            neighbour = stack.enter_context(BusyNeighbour(args.contention))
        monitor = stack.enter_context(LoadMonitor(
            exclude=() if neighbour is None else (neighbour.pid,),
            loadavg_start=LOAD_AT_START if argv is None else None))
        if not monitor.report.idle:
            print('WARNING: the machine is busy at the start (' + next(iter(
                monitor.report.lines().values())) + '): timings will not be the idle speed',
                file=sys.stderr, flush=True)
        results = run_benchmark(candidates, args.mode, args.shape, args.batch_size, args.runs,
                                args.warmup, args.device, args.threads, args.memory_modes,
                                log=lambda msg: print(msg, file=sys.stderr, flush=True),
                                matmul_peak=args.runtimes, neighbour=neighbour)
    load = monitor.report
    info.update(load.lines())
    if neighbour is not None:
        info['contention'] = ('rows marked "[1 busy neighbour]" ran while one other process '
                              'spun on a CPU (paused between those runs)')
    info['wall time of this run'] = f'{time.time() - start:.0f} s'
    print(text_table(results))
    print('\n'.join(ratio_lines(results)))
    loaded = contention_lines(results)
    if loaded:
        print('\n'.join(loaded))
        info['loaded / idle'] = '; '.join(loaded)
    shares = peak_lines(results)
    if shares:
        print('\n'.join(shares))
    print('\n'.join(f'{k}: {v}' for k, v in info.items()))
    if shares:
        info['share of the same-process matmul peak'] = '; '.join(shares)
    if load.warning():
        print(load.warning())
    if args.plot:
        save_plot(results, args.plot, note=_plot_note(load))
    if args.markdown:
        command = 'python tools/benchmark.py ' + shlex.join(
            sys.argv[1:] if argv is None else argv)
        plot = None
        if args.plot:
            plot = Path(os.path.relpath(args.plot.resolve(),
                                        args.markdown.parent.resolve())).as_posix()
        write_markdown(args.markdown, markdown_report(results, info, command, plot),
                       args.section)


def _plot_note(load: LoadReport) -> str:
    """The plot's footer: the machine's load around the run."""
    lines = load.lines()
    text = '; '.join(f'{k.split(" (")[0]}: {v}' for k, v in lines.items()
                     if k != 'machine idle')
    return ('' if load.idle else 'NOT IDLE - ') + text


if __name__ == '__main__':
    main()
