"""Every command and snippet of README.md and of the docs pages in :data:`PAGES` runs as written
(smoke-sized by the substitutions of tests/readme_cases.py), in a sandbox folder, and leaves the
repository as it was; every relative link of those pages resolves.

The commands run in README order (a later one may read what an earlier one wrote: the ONNX
snippet reads the exported graph) with ``.venv``/``tools`` linked into the sandbox and
``configs`` copied, so relative outputs land in the sandbox. Commands needing COCO, ImageNet,
a GPU or a download must fail with their clear message instead (no traceback). A README
command or snippet without an entry in ``readme_cases.CASES`` fails, so does an entry that no
longer matches anything in the pages.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from readme_cases import CASES, CKPT, DEMO_DET, Case, command_key, snippet_key, substitute

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
# the pages whose commands run here, in this order (a command on two pages runs where it first
# appears; a case's `needs` must be on the same page or an earlier one). Every page of docs/ is
# listed (test_every_docs_page_is_listed); swap_coverage.md is the sweep's generated table.
PAGES = ('README.md', 'docs/install.md', 'docs/demo.md', 'docs/backbones.md',
         'docs/weights.md', 'docs/errors.md', 'docs/training.md', 'docs/own_data.md',
         'docs/configs_and_swap.md', 'docs/pictures.md', 'docs/deployment.md',
         'docs/fast_path.md', 'docs/benchmarks.md', 'docs/architecture.md',
         'docs/swap_coverage.md')
# environment variables a user's shell might carry that would change what the commands see
CLEARED_ENV = ('PVT_MM_DATA_ROOT', 'PVT_MM_DEMO_DATA', 'PVT_MM_DEBUG', 'PYTHON', 'PIP_CONSTRAINT')


@dataclass(frozen=True)
class Item:
    """One README command (a bash line, continuations joined) or Python block."""

    line: int
    lang: str  # 'bash' or 'python'
    text: str
    key: str
    exports: tuple[str, ...] = ()  # the same block's earlier `export` lines
    page: str = 'README.md'


def readme_items(text: str | None = None, page: str = 'README.md') -> list[Item]:
    """The commands of one page (``text``), or of every page in :data:`PAGES` (each command
    once: a docs page may repeat the README's)."""
    if text is None:
        items, seen = [], set()
        for name in PAGES:
            if (ROOT / name).is_file():
                for item in readme_items((ROOT / name).read_text(), name):
                    if item.key not in seen:
                        seen.add(item.key)
                        items.append(item)
        return items
    items = []
    for m in re.finditer(r'^```(\w*)[ \t]*\n(.*?)^```', text, re.S | re.M):
        lang, body = m.group(1), m.group(2)
        line = text.count('\n', 0, m.start()) + 1
        if lang == 'python':
            items.append(Item(line, 'python', body, snippet_key(body), page=page))
        elif lang in ('bash', 'sh', 'shell', 'console'):
            exports: list[str] = []
            for command in re.sub(r'\\\n\s*', ' ', body).splitlines():
                if not command.strip() or command.strip().startswith('#'):
                    continue
                key = command_key(command)
                items.append(Item(line, 'bash', key, key, tuple(exports), page))
                if key.startswith('export '):
                    exports.append(key)
    return items


def test_every_readme_command_has_a_case():
    """A README command without an entry in readme_cases.CASES (or an entry without a README
    command) fails here: say how the test runs it, or that it cannot and why."""
    keys = [item.key for item in readme_items()]
    assert len(keys) > 20  # the extraction found the README's blocks
    missing = [k for k in keys if k not in CASES]
    stale = [k for k in CASES if k not in keys]
    assert not missing, 'README / docs commands without a case in tests/readme_cases.py: ' + \
        '; '.join(missing)
    assert not stale, 'tests/readme_cases.py entries on no page of PAGES: ' + '; '.join(stale)


def test_every_docs_page_is_listed():
    """A page added to docs/ has its commands run: it must be in :data:`PAGES`."""
    pages = {f'docs/{p.name}' for p in (ROOT / 'docs').glob('*.md')}
    assert not pages - set(PAGES), f'docs pages missing from PAGES: {sorted(pages - set(PAGES))}'
    assert all((ROOT / p).is_file() for p in PAGES), [p for p in PAGES if not (ROOT / p).is_file()]


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors of a Markdown page (headings inside code fences skipped)."""
    anchors: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith('```'):
            fenced = not fenced
        elif not fenced and re.match(r'#{1,6} ', line):
            slug = re.sub(r'[^\w\- ]', '', line.lstrip('#').strip().lower()).replace(' ', '-')
            n, anchor = 0, slug
            while anchor in anchors:
                n += 1
                anchor = f'{slug}-{n}'
            anchors.add(anchor)
    return anchors


def _links(text: str) -> list[str]:
    """The link targets of a Markdown page: ``[text](target)`` and ``<img src="target">``
    outside code fences."""
    text = re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)
    return re.findall(r'\]\(([^)\s]+)\)', text) + re.findall(r'<img [^>]*src="([^"]+)"', text)


def test_every_relative_link_resolves():
    """Every relative link of the README and the docs pages names a file of the repository and,
    into a Markdown page, one of its headings."""
    broken = []
    for name in PAGES:
        page = ROOT / name
        for target in _links(page.read_text()):
            if re.match(r'[a-z]+:', target):  # https:, mailto:
                continue
            path, _, anchor = target.partition('#')
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f'{name}: {target} (no such file)')
            elif anchor and file.suffix == '.md' and anchor not in _anchors(file.read_text()):
                broken.append(f'{name}: {target} (no such heading)')
    assert not broken, '\n'.join(broken)


def test_link_check_reads_github_anchors():
    assert _anchors('# A: b, `c` (d)\n```\n# not a heading\n```\n## A: b, `c` (d)\n') == {
        'a-b-c-d', 'a-b-c-d-1'}
    assert _links('[x](a.md#b) <img src="i.png" width="1">\n```\n[y](z.md)\n```\n') == [
        'a.md#b', 'i.png']


def test_extraction_joins_continuations_and_carries_exports():
    text = ('```bash\nexport A=1   # note\n.venv/bin/python x.py --a \\\n    --b  # c\n'
            '# a comment\n```\n\n```python\nimport os\nprint(1)\n```\n')
    items = readme_items(text)
    assert [(i.lang, i.key, i.exports) for i in items] == [
        ('bash', 'export A=1', ()), ('bash', '.venv/bin/python x.py --a --b', ('export A=1',)),
        ('python', 'import os', ())]


# ---- the sandbox ----------------------------------------------------------------------------


def _whole_demo_checkpoint(path: Path) -> None:
    """A whole demo ATSS checkpoint with random weights, as tools/train.py would name it."""
    from mm_helpers import build_model

    from pvt_mm.demo import CLASSES
    from pvt_mm.engine.runtime import load_config
    model = build_model(load_config(ROOT / DEMO_DET))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': tuple(CLASSES)}}}, path)


@pytest.fixture(scope='module')
def sandbox(tmp_path_factory) -> Path:
    from helpers import official_state_dict

    from pvt_mm.demo import DemoDataSpec, make_demo_data
    box = tmp_path_factory.mktemp('readme')
    for name in ('.venv', 'tools'):
        (box / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / 'configs', box / 'configs')
    make_demo_data(box / 'data/demo', DemoDataSpec(num_train=8, num_val=4))
    for arch, name in (('small', 'pvt_small.pth'), ('b2', 'pvt_v2_b2.pth')):
        torch.save(official_state_dict(arch), box / name)  # the official release layout
    _whole_demo_checkpoint(box / CKPT)
    (box / 'torch_home').mkdir()  # an empty hub cache: nothing is found there by accident
    return box


def _env(box: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env['TORCH_HOME'] = str(box / 'torch_home')
    env['PYTHONDONTWRITEBYTECODE'] = '1'
    return env


def _execute(item: Item, case: Case, box: Path, index: int) -> tuple[int, str, float]:
    if item.lang == 'python':
        script = box / f'snippet_{index}.py'
        script.write_text(substitute(item.text, case))
        argv = [str(box / '.venv/bin/python'), script.name]
    else:
        argv = ['bash', '-c', '; '.join([*item.exports, substitute(item.text, case)])]
    start = time.perf_counter()
    run = subprocess.run(argv, cwd=box, env=_env(box), capture_output=True, text=True,
                         timeout=case.timeout)
    return run.returncode, run.stdout + run.stderr, time.perf_counter() - start


def _problem(item: Item, case: Case, status: int, output: str) -> str | None:
    tail = '\n'.join(output.strip().splitlines()[-8:])
    where = f'{item.page}:{item.line}: {item.key}'
    if case.kind == 'run' and status != 0:
        return f'{where}\n  exit {status}:\n{tail}'
    if case.kind == 'error':
        if status == 0:
            return f'{where}\n  was expected to fail (needs data this test lacks) but exited 0'
        if not re.search(case.pattern, output):
            return f'{where}\n  exit {status} without the message /{case.pattern}/:\n{tail}'
        if 'Traceback (most recent call last)' in output and 'dist_' not in item.key:
            return f'{where}\n  the error came with a traceback:\n{tail}'
    return None


def _git_status() -> str:
    return subprocess.run(['git', 'status', '--porcelain', '--untracked-files=all'], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


LANES = 2  # commands run two at a time (most of each is a single-threaded Python start-up)


@pytest.mark.skipif(not (ROOT / '.venv/bin/python').is_file(),
                    reason='the README commands run .venv/bin/python (make install)')
def test_readme_commands_run_as_written(sandbox):
    """Each README command / snippet per its case; the repository's `git status` unchanged.
    Commands of one README block run in order; blocks run :data:`LANES` at a time, and a case's
    ``needs`` waits for the command that writes its input."""
    from concurrent.futures import ThreadPoolExecutor

    before = _git_status()
    items = [(i, item, CASES[item.key]) for i, item in enumerate(readme_items())
             if item.key in CASES and CASES[item.key].kind != 'not_run']
    blocks: dict[tuple[str, int], list] = {}
    for entry in items:
        blocks.setdefault((entry[1].page, entry[1].line), []).append(entry)
    futures = {}

    def run_block(entries: list) -> list[tuple[float, str, str | None]]:
        out = []
        for index, item, case in entries:
            if case.needs and case.needs not in [i.key for _, i, _ in entries]:
                futures[case.needs].result()  # raises if it failed to run (an earlier block)
            status, output, seconds = _execute(item, case, sandbox, index)
            out.append((seconds, item.key, _problem(item, case, status, output)))
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(LANES) as pool:
        for entries in blocks.values():
            future = pool.submit(run_block, entries)
            for _, item, _ in entries:
                futures[item.key] = future
        results = [r for f in dict.fromkeys(futures.values()) for r in f.result()]
    wall = time.perf_counter() - start
    problems = [p for _, _, p in results if p]
    print(f'\nREADME commands: {len(results)} in {wall:.0f} s wall, {LANES} at a time '
          f'(load {os.getloadavg()[0]:.1f})')
    for seconds, key, _ in sorted(results, reverse=True)[:8]:
        print(f'  {seconds:5.1f} s  {key[:100]}')
    assert not problems, '\n\n'.join(problems)
    assert _git_status() == before, 'README commands changed the repository'


if __name__ == '__main__':  # list the README's commands and their cases
    for item in readme_items():
        case = CASES.get(item.key)
        print(f'{item.page}:{item.line:<4d} {case.kind if case else "MISSING":8s} '
              f'{item.key[:80]}')
    sys.exit(0)
