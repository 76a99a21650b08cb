"""Tables, ratios, Markdown and plots of :func:`pvt_mm.analysis.benchmark.run_benchmark`."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from ..models.fast import native
from .benchmark import Result

HEADERS = ('model', 'mode', 'input', 'batch', 'latency ms', 'images/s', 'peak MiB',
           'ours speedup', 'memory vs ours', 'cos min (per stage)', 'max abs diff', 'last loss',
           'faulted MiB/step')
PLOT_DPI = 80  # keeps the committed PNG small


def load_average() -> str:
    """'1-min / 5-min / 15-min' load averages of the machine."""
    return ' / '.join(f'{v:.2f}' for v in os.getloadavg())


def machine_info(threads: int, device: str) -> dict[str, str]:
    """CPU model, cores, threads, load, library versions (and the GPU on CUDA)."""
    cpu = platform.processor() or 'unknown'
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f
                       if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    info = {'cpu': f'{cpu} ({os.cpu_count()} cores visible)', 'threads': str(threads),
            'torch': torch.__version__, 'pvt_mm CPU inference': native.describe(),
            'date': datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
            'load average at the start (1/5/15 min)': load_average()}
    for lib in ('mmdet', 'mmseg', 'timm', 'mmcv', 'mmengine'):
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:
            pass
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def _group_key(r: Result) -> tuple:
    return (r.subject, r.mode, r.shape, r.batch_size)


def _ours(results: Sequence[Result], r: Result) -> Result | None:
    return next((o for o in results if _group_key(o) == _group_key(r) and o.role == 'ours'
                 and not o.with_cp), None)


def _fmt(v: float | None, spec: str, suffix: str = '') -> str:
    return '-' if v is None else f'{v:{spec}}{suffix}'


def rows(results: Sequence[Result]) -> list[list[str]]:
    """One table row per result (see HEADERS)."""
    out = []
    for r in results:
        ours = _ours(results, r)
        speed = ours and r.latency_ms / ours.latency_ms
        mem = (ours and r.memory_mib and ours.memory_mib
               and r.memory_mib / ours.memory_mib)
        out.append([
            r.label, r.mode, f'{r.shape[0]}x{r.shape[1]}', str(r.batch_size),
            f'{r.latency_ms:.1f}', f'{r.throughput:.2f}', _fmt(r.memory_mib, '.0f'),
            _fmt(speed, '.2f', 'x'), _fmt(mem or None, '.2f', 'x'),
            '-' if r.cosine is None else f'{min(r.cosine):.5f} (' + ', '.join(
                f'{c:.4f}' for c in r.cosine) + ')',
            _fmt(r.max_abs_diff, '.3g'), _fmt(r.losses[-1] if r.losses else None, '.6g'),
            _fmt(statistics.median(r.faults_mib) if r.faults_mib else None, '.0f')])
    return out


def text_table(results: Sequence[Result]) -> str:
    """The rows as an aligned plain-text table."""
    body = [list(HEADERS)] + rows(results)
    widths = [max(len(row[i]) for row in body) for i in range(len(HEADERS))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)) for row in body]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def markdown_table(results: Sequence[Result]) -> str:
    body = rows(results)
    lines = ['| ' + ' | '.join(HEADERS) + ' |', '|' + '---|' * len(HEADERS)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in body]
    return '\n'.join(lines)


def ratio_lines(results: Sequence[Result]) -> list[str]:
    """'speedup vs mmdet: 1.3x' style lines for every ours-vs-other pair and with_cp."""
    out = []
    for r in results:
        ours = _ours(results, r)
        if ours is None or r is ours:
            continue
        where = f'{r.mode} {r.shape[0]}x{r.shape[1]} batch {r.batch_size}: {ours.label}'
        if r.with_cp:
            line = (f'{where}: with_cp step time {r.latency_ms / ours.latency_ms:.2f}x')
            if r.memory_mib and ours.memory_mib:
                line += (f', peak memory {ours.memory_mib:.0f} -> {r.memory_mib:.0f} MiB '
                         f'({100 * (1 - r.memory_mib / ours.memory_mib):.0f}% less)')
            if r.losses and ours.losses:
                line += (f', loss with / without {r.losses[-1]:.6f} / {ours.losses[-1]:.6f} '
                         f'(|diff| {abs(r.losses[-1] - ours.losses[-1]):.2g})')
            out.append(line)
            continue
        peer = r.impl if r.role == 'peer' else r.label
        line = f'{where}: speedup vs {peer}: {r.latency_ms / ours.latency_ms:.2f}x'
        if r.memory_mib and ours.memory_mib:
            line += f', peak memory ours / {peer}: {ours.memory_mib / r.memory_mib:.2f}x'
        out.append(line)
        fp32 = _same_run(results, r, 'fp32') if r.mode in ('bf16', 'fp16') else None
        if fp32 is not None:  # reduced precision is judged against the peer's fp32
            out.append(f'{where}: {r.mode} speedup vs {peer} fp32: '
                       f'{fp32.latency_ms / ours.latency_ms:.2f}x')
    return out


def _same_run(results: Sequence[Result], r: Result, mode: str) -> Result | None:
    """``r``'s model at the same input size and batch in another mode, if it was measured."""
    return next((x for x in results if x.label == r.label and x.mode == mode
                 and x.shape == r.shape and x.batch_size == r.batch_size), None)


def markdown_report(results: Sequence[Result], info: dict[str, str], command: str,
                    plot: str | None = None) -> str:
    """A Markdown section: machine, command, table, ratios and the plot."""
    lines = ['```', command, '```', '']
    lines += [f'- {k}: {v}' for k, v in info.items()]
    lines += ['', markdown_table(results), '', 'Ratios (speedup = their latency / ours: > 1x '
              'means ours is faster; memory ratio < 1x means ours uses less):', '']
    lines += [f'- {line}' for line in ratio_lines(results)]
    if plot:
        lines += ['', f'![benchmark plot]({plot})']
    return '\n'.join(lines) + '\n'


def write_markdown(path: str | Path, text: str, section: str | None = None) -> None:
    """Write ``text`` to ``path``; with ``section``, replace only the part of an existing file
    between ``<!-- benchmark:NAME -->`` and ``<!-- /benchmark:NAME -->`` (appended, with the
    markers, when the file has none)."""
    path = Path(path)
    if section is None:
        path.write_text(text)
        return
    begin, end = f'<!-- benchmark:{section} -->', f'<!-- /benchmark:{section} -->'
    block = f'{begin}\n{text}{end}'
    old = path.read_text() if path.exists() else ''
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old + ('\n' if old and not old.endswith('\n') else '') + block + '\n'
    path.write_text(new)


def save_plot(results: Sequence[Result], path: str | Path, note: str | None = None) -> None:
    """Grouped bars, one column of panels per mode: latency (log scale) on top and, where
    measured, peak memory below; one group per subject / input size, one bar per model.
    ``note``: a footer (the machine's load during the run)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r.mode for r in results))
    kinds = list(dict.fromkeys(_kind(r) for r in results))
    metrics = [('latency_ms', 'latency (ms, median)')]
    if any(r.memory_mib for r in results):
        metrics.append(('memory_mib', 'peak memory (MiB)'))
    groups = list(dict.fromkeys((r.subject, r.shape, r.batch_size) for r in results))
    fig, axes = plt.subplots(len(metrics), len(modes), squeeze=False,
                             figsize=(1.5 + len(modes) * max(3., 0.9 * len(groups)),
                                      1 + 2.6 * len(metrics)))
    width = 0.8 / len(kinds)
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for col, mode in enumerate(modes):
        for row, (metric, ylabel) in enumerate(metrics):
            ax = axes[row][col]
            if not any(getattr(r, metric) for r in results if r.mode == mode):
                ax.axis('off')
                continue
            for k, kind in enumerate(kinds):
                bars = [(g, getattr(r, metric)) for g, key in enumerate(groups)
                        for r in results if r.mode == mode and _kind(r) == kind
                        and (r.subject, r.shape, r.batch_size) == key and getattr(r, metric)]
                if bars:
                    ax.bar([g + (k - (len(kinds) - 1) / 2) * width for g, _ in bars],
                           [v for _, v in bars], width, color=colors[k % len(colors)],
                           label=kind)
            if metric == 'latency_ms':
                ax.set_yscale('log')
                ax.set_title(mode)
            if col == 0:
                ax.set_ylabel(ylabel)
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels([f'{s}\n{h}x{w} b{b}' for s, (h, w), b in groups], fontsize=7)
            ax.grid(axis='y', alpha=.3)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.containers}
    fig.legend(list(handles.values()), list(handles), loc='upper center',
               ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 0.93))
    if note:
        import textwrap
        fig.text(0.01, 0.005, textwrap.fill(note, int(fig.get_figwidth() * 16)), fontsize=6,
                 va='bottom', color='red' if note.startswith('NOT IDLE') else 'black')
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def _kind(r: Result) -> str:
    """Bar legend: the implementation (plus with_cp / reference)."""
    if r.role == 'ref':
        return 'pvt_mm reference'
    return r.impl + (' with_cp' if r.with_cp else '')
