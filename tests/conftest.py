import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path


def _test_deps_site() -> Path:
    """Where ``make install-tests`` puts the test-only packages (requirements/tests.txt):
    ``<venv>/test-deps``, off the venv's own sys.path (they break stock mmdet / mmseg)."""
    deps = str(Path(sys.prefix) / 'test-deps')
    return Path(sysconfig.get_path('purelib', vars={'base': deps, 'platbase': deps}))


TEST_DEPS = _test_deps_site()
if TEST_DEPS.is_dir() and str(TEST_DEPS) not in sys.path:
    # this process only, ahead of the venv's site-packages (what pip put there because the
    # venv's version did not fit wins); the tools the tests start as subprocesses run in the
    # user's stock environment
    own = sysconfig.get_path('purelib')
    sys.path.insert(sys.path.index(own) if own in sys.path else len(sys.path), str(TEST_DEPS))

import pytest  # noqa: E402
import torch  # noqa: E402

import pvt_mm  # noqa: E402,F401  first: pvt_mm._compat guards mmpretrain before mmdet imports it

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
# Numerics must not depend on the suite's own load: pvt_mm keeps torch's thread count (its
# load-following choice is tested in test_threads.py / test_contention.py, which switch it on).
# Also read by the tools the tests start as subprocesses.
os.environ['PVT_MM_ADAPTIVE_THREADS'] = '0'


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='module')
def tiny_data(request, tmp_path_factory) -> Iterator[Path]:
    """A tiny demo dataset (``pvt_mm.demo.make_demo_data``) of the size the test module's
    ``TINY`` (a ``DemoDataSpec``) asks for, made once per module. While the module's tests run,
    the demo configs' data root (``$PVT_MM_DEMO_DATA``, ``DATA_ENV``) points at it, so the
    tools run in this process find it; a tool started as a subprocess inherits the same value
    (test_resume.py also passes it explicitly)."""
    from pvt_mm.demo import DemoDataSpec, make_demo_data
    from pvt_mm.demo.pipeline import DATA_ENV
    spec = getattr(request.module, 'TINY', None)
    if not isinstance(spec, DemoDataSpec):
        raise TypeError(f'{request.module.__name__} uses tiny_data: give it a module-level '
                        'TINY = DemoDataSpec(...) (the dataset size it needs)')
    root = make_demo_data(tmp_path_factory.mktemp(f'{request.module.__name__}_data'), spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ENV, str(root))
        yield root


def pytest_report_header(config) -> str | None:
    if not TEST_DEPS.is_dir():
        return (f'test-only packages not installed ({TEST_DEPS.parents[2]} missing): '
                '`make install-tests` (tests of transformers / mmpretrain / motmetrics fail)')
    return None
