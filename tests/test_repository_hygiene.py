"""The repository and its test suite stay tidy: exports and conversions written in the
repository root are ignored by git, and every test function has a name of its own across
tests/ (a name says what fails in a report and selects one test with ``-k``; a second
definition in one file silently replaces the first)."""
from __future__ import annotations

import ast
import subprocess
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_exports_and_conversions_in_the_repository_root_are_ignored():
    names = ['pvt_v2_b2.onnx', 'atss.onnx', 'pvt_v2_b2.safetensors', 'x.pth']
    run = subprocess.run(['git', 'check-ignore', *names], cwd=ROOT, capture_output=True,
                         text=True)
    assert sorted(run.stdout.split()) == sorted(names)


def collected_names(source: str) -> list[str]:
    """The names of the functions pytest collects from a module's source: module-level
    ``test*`` functions and ``test*`` methods of ``Test*`` classes (one entry per definition)."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.append(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith('Test'):
            names += [f'{node.name}.{n.name}' for n in node.body
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return [n for n in names if n.rpartition('.')[2].startswith('test')]


def test_test_function_names_are_unique_across_the_suite():
    where = defaultdict(list)
    for path in sorted((ROOT / 'tests').glob('*.py')):
        for name in collected_names(path.read_text()):
            where[name].append(path.name)
    repeated = {name: files for name, files in where.items() if len(files) > 1}
    assert not repeated, f'test names defined more than once: {repeated}'


def test_name_check_finds_repeats_within_and_across_files():
    one = 'def test_a():\n    pass\n\nclass TestX:\n    def test_b(self):\n        pass\n'
    assert collected_names(one) == ['test_a', 'TestX.test_b']
    assert collected_names(one + '\ndef test_a():\n    pass\n').count('test_a') == 2
    assert collected_names('def helper():\n    pass\n') == []
