"""The install leaves the user's environment stock and installs beside what is there (issue
26): stock mmdet / mmseg import in the venv with pvt_mm never imported, tools/install.sh keeps
the test-only packages out of the venv and fails on CI when the native kernels do not build,
pvt_mm's metadata names no OpenMMLab / onedl-* distribution, the import-time version check, and
pvt_mm on the maintained onedl-* fork stack (tests/fork_smoke.py)."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
import setuptools
from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
# what a user's script may start with (issue 26; /work/shared/README.md trap 17)
STOCK_IMPORTS = [
    'import mmdet.models',
    'import mmseg.models',
    'from mmseg.apis import init_model',
    'from mmdet.utils import register_all_modules; register_all_modules()',
    'from mmseg.utils import register_all_modules; register_all_modules()',
    'from mmdet.apis import DetInferencer',
    'import mmpretrain',  # only where installed
]
MM_FAMILY = {'mmcv', 'mmcv-full', 'mmcv-lite', 'mmdet', 'mmengine', 'mmengine-lite',
             'mmsegmentation', 'mmpretrain', 'mmdeploy'}


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: no PYTHONPATH (the test-only packages are on this process's path only)."""
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONSTARTUP')}
    return {**env, **extra}


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], cwd=cwd, env=user_env(**env),
                          capture_output=True, text=True, timeout=300)


def _stock_import(statement: str, cwd: Path) -> str | None:
    """``statement`` as the first line of a user's script: None, or why it failed."""
    code = (f'import importlib.util, sys\n'
            f'if {statement!r} == "import mmpretrain" and not importlib.util.find_spec('
            f'"mmpretrain"):\n    sys.exit(0)\n'
            f'{statement}\n'
            f'assert "pvt_mm" not in sys.modules, "pvt_mm was imported"\n'
            f'assert not [p for p in sys.path if "test-deps" in p], sys.path\n')
    done = run_python(code, cwd)
    last = (done.stderr.strip().splitlines() or [''])[-1]
    return None if done.returncode == 0 else f'{statement}: {last}'


def test_stock_imports_without_pvt_mm(tmp_path):
    """Each in a fresh interpreter of this venv (two at a time: ~5-9 s of CPU each)."""
    with ThreadPoolExecutor(2) as pool:
        problems = [p for p in pool.map(lambda s: _stock_import(s, tmp_path), STOCK_IMPORTS) if p]
    assert not problems, '\n'.join(problems)


def _fake_python(tmp_path: Path, fail_on: str) -> tuple[Path, Path]:
    """A venv whose python logs its arguments and fails when they contain ``fail_on``."""
    log = tmp_path / 'calls.log'
    python = tmp_path / 'venv/bin/python'
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n'
                      f'case "$*" in *{fail_on}*) exit 1 ;; esac\n')
    python.chmod(0o755)
    return python.parent.parent, log


@pytest.mark.parametrize('ci', ['true', ''])
def test_install_script(ci, tmp_path):
    """The venv gets runtime + deployment packages, never requirements/tests.txt; on CI a
    failed native build fails the install, a user's install carries on with a warning."""
    venv, log = _fake_python(tmp_path, 'tools/build_native.py')
    done = subprocess.run(['bash', str(ROOT / 'tools/install.sh')], capture_output=True,
                          text=True, timeout=60, env=user_env(VENV=str(venv), CI=ci))
    calls = log.read_text()
    assert '-r requirements/runtime.txt -r requirements/deploy.txt' in calls
    assert 'tests.txt' not in calls
    if ci:
        assert done.returncode == 1
        assert 'the native kernels must build here' in done.stderr
        assert 'import pvt_mm' not in calls
    else:
        assert done.returncode == 0, done.stderr
        assert 'continuing without them' in done.stderr
        # stock mmdet / mmseg checked in an interpreter of their own, before pvt_mm
        lines = calls.splitlines()
        assert lines[-2] == '-c import mmdet.models, mmseg.models'
        assert lines[-1].startswith('-c import pvt_mm;')


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _is_mm_family(name: str) -> bool:
    return name in MM_FAMILY or name.startswith('onedl-')


def test_setup_names_no_openmmlab_or_fork_distribution(monkeypatch):
    """pip resolves pvt_mm's requirements without choosing between OpenMMLab's packages and
    the forks (either would be installed over the other)."""
    captured = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kwargs: captured.update(kwargs))
    runpy.run_path(str(ROOT / 'setup.py'))
    requires = captured['install_requires'] + sum(captured.get('extras_require', {}).values(), [])
    assert not {n for n in _names(requires) if _is_mm_family(n)}
    assert {'torch', 'timm'} <= _names(captured['install_requires'])


def test_installed_metadata_names_no_openmmlab_or_fork_distribution():
    """The metadata pip reads from the installed pvt_mm (stale after a setup.py change until
    ``make install`` runs again)."""
    requires = [r.split(';')[0] for r in metadata.requires('pvt_mm') or []]
    assert not {n for n in _names(requires) if _is_mm_family(n)}, \
        'installed pvt_mm metadata names mm packages: run make install again'


def _fake_dist(root: Path, dist: str, version: str, module: str) -> None:
    (root / module).mkdir(parents=True)
    (root / module / '__init__.py').write_text('')
    info = root / f'{dist.replace("-", "_")}-{version}.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n')


@pytest.mark.parametrize('dist,version,module', [('mmdet', '2.28.2', 'mmdet'),
                                                 ('onedl-mmcv', '2.4.0', 'mmcv')])
def test_import_refuses_unsupported_versions_in_one_line(dist, version, module, tmp_path):
    _fake_dist(tmp_path / 'site', dist, version, module)
    done = run_python('import pvt_mm', tmp_path, PYTHONPATH=str(tmp_path / 'site'))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith('pvt_mm._compat.UnsupportedVersionError: pvt_mm does not support '
                           f'{dist} {version} (import name {module}); supported: ')
    assert 'docs/install.md' in last


def test_version_check_reads_the_distribution_that_imports(tmp_path):
    """A fork shadowing OpenMMLab's package (an earlier sys.path entry) is the one checked;
    supported versions of either family pass."""
    _fake_dist(tmp_path / 'site', 'onedl-mmdetection', '3.5.9', 'mmdet')
    code = ('import importlib.util as u\n'
            f'spec = u.spec_from_file_location("c", {str(ROOT / "pvt_mm/_compat.py")!r})\n'
            'c = u.module_from_spec(spec); spec.loader.exec_module(c)\n'
            'c.check_versions()\n'
            'print(c.providing_distribution("mmdet"), c.providing_distribution("mmcv"))\n')
    done = run_python(code, tmp_path, PYTHONPATH=str(tmp_path / 'site'))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("('onedl-mmdetection', '3.5.9') (")


# ---- the fork stack -----------------------------------------------------------------------
def _fork_pins() -> dict[str, str]:
    lines = (ROOT / 'requirements/forks.txt').read_text().splitlines()
    return dict(line.split('==') for line in lines if line and not line.startswith('#'))


def onedl_mmcv_wheel() -> Path | None:
    """The onedl-mmcv wheel (built with its ops) for this interpreter: ../shared/wheels or a
    PIP_FIND_LINKS folder."""
    folders = [ROOT.parent / 'shared/wheels', *map(Path, os.environ.get('PIP_FIND_LINKS',
                                                                        '').split())]
    tags = set(sys_tags())
    version = _fork_pins()['onedl-mmcv']
    for folder in folders:
        for wheel in sorted(folder.glob(f'onedl_mmcv-{version}-*.whl')):
            if set(parse_wheel_filename(wheel.name)[3]) & tags:
                return wheel
    return None


def test_fork_stack_smoke(tmp_path):
    """pvt_mm on onedl-mmengine / -mmcv / -mmdetection / -mmsegmentation, installed with
    --no-deps into a folder that shadows OpenMMLab's packages: tests/fork_smoke.py."""
    wheel = onedl_mmcv_wheel()
    if wheel is None:
        pytest.skip('no onedl-mmcv wheel for this interpreter in ../shared/wheels or '
                    'PIP_FIND_LINKS (compiling it takes ~10 min)')
    forks = tmp_path / 'forks'
    pip = [sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
           '--only-binary', 'onedl-mmcv', '--find-links', str(wheel.parent), '--target',
           str(forks), '-r', str(ROOT / 'requirements/forks.txt')]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=600, env=user_env(
        PIP_CONSTRAINT=str(ROOT / 'requirements/constraints.txt')))
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, str(ROOT / 'tests/fork_smoke.py'),
                           str(tmp_path / 'work'), '--expect', 'onedl'], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=user_env(PYTHONPATH=str(forks)))
    steps = [line for line in done.stdout.splitlines() if line.startswith('fork smoke:')]
    assert done.returncode == 0 and steps[-1:] == ['fork smoke: ok'], \
        '\n'.join(steps + done.stderr.strip().splitlines()[-15:])
