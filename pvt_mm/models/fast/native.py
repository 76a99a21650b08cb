"""The native inference kernels (``csrc/``: the attention tile kernel ``tile_attention.cpp`` and
the fused v1 MLP ``tile_mlp.cpp``): built once per machine and torch.

``make install`` builds them (``python tools/build_native.py``, i.e. :func:`main`); a forward only
loads what was built, never compiles. Without them (no compiler at install time, another torch,
another CPU, ``PVT_MM_NATIVE=0``) the inference fast path computes attention through oneDNN
matmuls over query chunks and the MLP through oneDNN linears over row bands instead;
:func:`describe` says which one runs (``tools/benchmark.py`` prints it).

The build lives in ``$PVT_MM_NATIVE_DIR`` if set, else ``<sys.prefix>/share/pvt_mm/native``
(the virtual environment of the torch it was compiled against), in a folder named by a hash of
the source, the torch version, the compiler flags and the CPU's feature flags: a change of any
of them means another build, never a stale or foreign binary.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).with_name('csrc')
SOURCES = tuple(CSRC / name for name in ('bindings.cpp', 'tile_attention.cpp', 'tile_mlp.cpp'))
HEADERS = (CSRC / 'common.h',)
ENV_SWITCH = 'PVT_MM_NATIVE'  # '0': never use the native kernel
ENV_DIR = 'PVT_MM_NATIVE_DIR'
_UNSET = object()
_loaded: object = _UNSET  # the module, or a str: why there is none
_load_lock = threading.Lock()  # several threads' first forwards load it once, whole
BUILD_COMMAND = 'python tools/build_native.py'


def _cflags() -> list[str]:
    """The compiler flags: ATen's vector types at torch's own CPU capability."""
    flags = ['-O3', '-fopenmp']
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ('AVX512', 'AVX2'):
        flags += ['-march=native', f'-DCPU_CAPABILITY_{capability}',
                  f'-DCPU_CAPABILITY={capability}']
    return flags


def _cpu_features() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith(('flags', 'Features')):
                return line
    except OSError:
        pass
    return ''


def build_key() -> str:
    """What the binary depends on, hashed: sources, torch, flags, CPU features, Python."""
    h = hashlib.sha256()
    for path in SOURCES + HEADERS:
        h.update(path.read_bytes())
    for part in (torch.__version__, ' '.join(_cflags()), _cpu_features(), sys.version):
        h.update(part.encode())
    return h.hexdigest()[:16]


def module_name() -> str:
    return f'pvt_mm_native_{build_key()}'


def build_dir() -> Path:
    root = os.environ.get(ENV_DIR) or Path(sys.prefix) / 'share' / 'pvt_mm' / 'native'
    return Path(root) / build_key()


def _import(path: Path) -> ModuleType:
    name = path.stem
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def kernel() -> ModuleType | None:
    """The built kernel module, or None (the reason is in :func:`describe`). Loaded once."""
    global _loaded
    if _loaded is _UNSET:
        with _load_lock:
            if _loaded is _UNSET:
                _loaded = _load()
    loaded = _loaded
    return None if isinstance(loaded, str) else loaded


def _load() -> ModuleType | str:
    if os.environ.get(ENV_SWITCH, '1') == '0':
        return f'switched off ({ENV_SWITCH}=0)'
    path = build_dir() / f'{module_name()}.so'
    if not path.is_file():
        return f'not built for this torch / CPU (run: {BUILD_COMMAND})'
    try:
        return _import(path)
    except (ImportError, OSError) as err:
        return f'{path} does not load ({err}); rebuild: {BUILD_COMMAND}'


def supports(dtype: torch.dtype) -> bool:
    """True when the native kernel is loaded and runs ``dtype`` (bf16 needs VNNI micro-kernels)."""
    mod = kernel()
    if mod is None:
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and mod.supports_bf16())


def describe() -> str:
    """One line: which attention and MLP kernels the CPU inference path uses, and why."""
    mod = kernel()
    if mod is None:
        return ('attention: oneDNN matmuls over query chunks, MLP: oneDNN linears over row '
                f'bands (native kernels {_loaded})')
    bf16 = 'fp32 + bf16' if mod.supports_bf16() else 'fp32 (bf16: oneDNN matmuls)'
    return f'attention + v1 MLP: native tile kernels, {bf16}'


def build(verbose: bool = False) -> ModuleType:
    """Compile the kernels for this machine (about a minute on 2 cores) and load them."""
    global _loaded
    from torch.utils import cpp_extension
    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with _load_lock:
        module = cpp_extension.load(module_name(), [str(p) for p in SOURCES],
                                    extra_cflags=_cflags(),
                                    extra_ldflags=['-fopenmp'], build_directory=str(directory),
                                    verbose=verbose)
        _loaded = module
    return module


def main(argv: list[str] | None = None) -> int:
    """``python tools/build_native.py [--verbose]``: build, then say what runs."""
    import argparse
    parser = argparse.ArgumentParser(
        prog='tools/build_native.py',
        description='Compile pvt_mm\'s native inference kernels for this CPU and torch.')
    parser.add_argument('--verbose', action='store_true', help="show the compiler's output")
    args = parser.parse_args(argv)
    try:
        build(verbose=args.verbose)
    except Exception as err:  # a compiler error: the matmul path still works
        print(f'pvt_mm: native kernels not built ({type(err).__name__}: '
              f'{str(err).strip().splitlines()[-1] if str(err).strip() else err}); '
              'the oneDNN matmul path will be used', file=sys.stderr)
        return 1
    print(f'pvt_mm: built {build_dir()}; {describe()}')
    return 0
