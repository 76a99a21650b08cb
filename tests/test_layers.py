"""The packages follow the layers: every import runs downward (issue 28).

Layers, lowest first. A module may import its own unit and any lower layer; never a higher
layer, and never a peer (another unit of its own layer):

====  ===============================================  ==========================================
  0   ``pvt_mm_runtime``                               the deployed predictor: nothing of pvt_mm,
                                                       no torch, no OpenMMLab package
  1   base: ``pvt_mm._compat``, ``_quiet``,            pure helpers and the one variant table
      ``version``, ``arch``                            (``arch``: no torch)
  2   ``pvt_mm.loading``                               checkpoint files; knows no modules
  3   ``pvt_mm.models``                                the backbones and classifiers
  4   ``pvt_mm.engine``                                config reading, model and runner building,
                                                       hooks, the tools' CLI plumbing
  5   ``pvt_mm.visualization``                         drawing: palettes, readable visualizers,
                                                       backbone maps, inferencer pictures
  6   ``pvt_mm.deploy`` | ``pvt_mm.swap``              peers; both draw with ``visualization``
                                                       (deploy's predictions, swap's palettes)
  7   ``pvt_mm.analysis`` | ``pvt_mm.demo``            peers; measure / run everything below
  8   ``pvt_mm`` (``pvt_mm/__init__.py``)              the facade: re-exports, registration
  9   ``tools/*.py``                                   command lines over any of the above
====  ===============================================  ==========================================

Peers never import each other: a piece two of them need moves down a layer (``visualization``
sits below ``deploy`` and ``swap`` for that reason). Module-level and in-function imports count
alike, ``if TYPE_CHECKING:`` ones too. Nothing inside pvt_mm imports the facade (``import
pvt_mm``): importing any ``pvt_mm.x`` runs ``pvt_mm/__init__.py`` first, so the backbones are
always registered without it.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]

BASE = ('_compat', '_quiet', 'version', 'arch')
# unit -> layer; a unit is a top-level package (or the base modules together)
LAYERS: dict[str, int] = {
    'pvt_mm_runtime': 0, 'base': 1, 'loading': 2, 'models': 3, 'engine': 4,
    'visualization': 5, 'deploy': 6, 'swap': 6, 'analysis': 7, 'demo': 7,
    'facade': 8, 'tools': 9,
}
# third-party packages a unit may not import at all (in-function imports included)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    'pvt_mm_runtime': ('torch', 'torchvision', 'timm', 'mmengine', 'mmcv', 'mmdet', 'mmseg'),
    'base': ('torch',),
}
SCANNED = ('pvt_mm', 'pvt_mm_runtime', 'tools')


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file
    line: int
    target: str  # the module imported, resolved (``pvt_mm.models.backbones``)
    text: str  # the statement as written


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def modules(root: Path) -> dict[str, Path]:
    """Every scanned module under ``root``: dotted name -> file."""
    found = {}
    for top in SCANNED:
        if (root / top).is_dir():
            found.update({module_name(root, p): p for p in sorted((root / top).rglob('*.py'))})
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """Every import statement of ``path`` (anywhere in the file), relative ones resolved;
    ``from X import y`` targets ``X.y`` where that is a module."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    source = path.read_text()
    out = []
    for node in ast.walk(ast.parse(source, str(path))):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        text = ' '.join(ast.get_source_segment(source, node).split())
        if isinstance(node, ast.Import):
            out += [Import(path, node.lineno, a.name, text) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                full = f'{base}.{alias.name}'
                out.append(Import(path, node.lineno, full if full in known else base, text))
    return sorted(out, key=lambda i: i.line)


def unit_of(module: str) -> str | None:
    """The unit a module belongs to; None for modules outside the scanned trees."""
    top, _, rest = module.partition('.')
    if top in ('pvt_mm_runtime', 'tools'):
        return top
    if top != 'pvt_mm':
        return None
    if not rest:
        return 'facade'
    sub = rest.split('.')[0]
    return 'base' if sub in BASE else sub


def violations(root: Path) -> list[str]:
    """``file:line: unit -> unit: statement`` for every import that breaks the layers."""
    known = modules(root)
    found = []
    for name, path in known.items():
        unit = unit_of(name)
        if unit not in LAYERS:
            found.append(f'{path.relative_to(root)}: {name} is in no layer (add its package '
                         'to LAYERS in tests/test_layers.py)')
            continue
        for imp in imports(name, path, known):
            where = f'{path.relative_to(root)}:{imp.line}: {imp.text}'
            top = imp.target.split('.')[0]
            if top in FORBIDDEN.get(unit, ()):
                found.append(f'{where}  ({unit} may not import {top})')
                continue
            target = unit_of(imp.target)
            if target is None or target == unit or unit == 'tools':
                continue
            if target not in LAYERS:
                found.append(f'{where}  (imports {imp.target}, which is in no layer)')
            elif target == 'facade':
                found.append(f'{where}  ({unit} imports the facade pvt_mm; import the module '
                             'that defines the name; registration needs no import)')
            elif LAYERS[target] > LAYERS[unit]:
                found.append(f'{where}  (upward: {unit} -> {target})')
            elif LAYERS[target] == LAYERS[unit]:
                found.append(f'{where}  (peers: {unit} -> {target}; move the shared piece '
                             'down a layer)')
    return list(dict.fromkeys(found))  # one line per statement and reason


def test_imports_follow_the_layers():
    found = violations(ROOT)
    assert not found, 'imports against the layers:\n' + '\n'.join(found)


def test_every_package_is_in_a_layer():
    units = {unit_of(name) for name in modules(ROOT)}
    assert units <= set(LAYERS), sorted(units - set(LAYERS))
    assert {'loading', 'models', 'engine', 'deploy', 'swap', 'visualization', 'analysis',
            'demo', 'base', 'facade', 'pvt_mm_runtime', 'tools'} <= units


# ---- the checker itself, on a small tree ------------------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {'pvt_mm/__init__.py': '', 'pvt_mm/models/__init__.py': '',
                      'pvt_mm/engine/__init__.py': '', 'pvt_mm/loading/__init__.py': '',
                      'pvt_mm/deploy/__init__.py': '', 'pvt_mm/swap/__init__.py': '',
                      **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_checker_flags_an_upward_import(tmp_path):
    root = _tree(tmp_path, {
        'pvt_mm/models/m.py': 'from ..engine import runner\n',
        'pvt_mm/engine/runner.py': '',
        'pvt_mm/loading/l.py': 'def f():\n    from pvt_mm.models import m\n',  # in-function
    })
    found = violations(root)
    assert len(found) == 2, found
    assert found[0].startswith('pvt_mm/loading/l.py:2: from pvt_mm.models import m')
    assert 'upward: loading -> models' in found[0]
    assert found[1].startswith('pvt_mm/models/m.py:1: from ..engine import runner')
    assert 'upward: models -> engine' in found[1]


def test_checker_passes_downward_and_own_package_imports(tmp_path):
    root = _tree(tmp_path, {
        'pvt_mm/engine/runner.py': 'from ..models import m\nfrom . import other\n'
                                   'from ..loading.l import f\nimport torch\n',
        'pvt_mm/engine/other.py': '',
        'pvt_mm/models/m.py': 'from ..arch import ARCHS\nfrom ..loading import l\n',
        'pvt_mm/arch.py': 'import difflib\n',
        'pvt_mm/loading/l.py': 'from ..arch import ARCHS\n',
        'tools/t.py': 'import pvt_mm\nfrom pvt_mm.deploy import x\n',
    })
    assert violations(root) == []


def test_checker_flags_peers_the_facade_and_forbidden_packages(tmp_path):
    root = _tree(tmp_path, {
        'pvt_mm/deploy/d.py': 'from ..swap import s\n',
        'pvt_mm/swap/s.py': 'import pvt_mm  # registers\n',
        'pvt_mm_runtime/__init__.py': 'def f():\n    import torch\n',
        'pvt_mm/extra/__init__.py': '',
    })
    found = '\n'.join(violations(root))
    assert 'peers: deploy -> swap' in found
    assert 'swap imports the facade' in found
    assert 'pvt_mm_runtime may not import torch' in found
    assert 'pvt_mm.extra is in no layer' in found


# ---- no cycles, even inside a layer's own package ---------------------------------------------
def test_no_import_cycles_between_modules():
    """No module imports one that (directly or not) imports it back: lazy imports inside
    functions count, ``if TYPE_CHECKING:`` imports too (move the shared piece down instead)."""
    known = {n: p for n, p in modules(ROOT).items() if unit_of(n) != 'tools'}
    graph = {name: {i.target for i in imports(name, path, known)
                    if i.target in known and i.target != name}
             for name, path in known.items()}
    in_cycles = set()
    for start in graph:  # every module that can reach itself again
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        if start in seen:
            in_cycles.add(start)
    assert not in_cycles, sorted(in_cycles)
