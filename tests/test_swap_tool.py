"""tools/swap_backbone.py's coverage sweep (a partial sweep never replaces the shipped table;
model builds stay quiet while it sweeps) and the swap package's public names (the swaps
themselves: tests/test_swap_backbone.py)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _swap_tool():
    sys.path.insert(0, str(ROOT / 'tools'))
    try:
        import swap_backbone
    finally:
        sys.path.remove(str(ROOT / 'tools'))
    return swap_backbone


def test_partial_sweep_does_not_replace_the_shipped_table():
    tool = _swap_tool()
    partial = tool.parse_args(['--sweep', 'mmdet', '--only', 'fcos', 'yolof'])
    assert partial.markdown != tool.SHIPPED_TABLE
    assert partial.markdown.parent == tool.PARTIAL_TABLE_DIR
    assert tool.parse_args(['--sweep', 'all', '--arch', 'b0']).markdown == tool.SHIPPED_TABLE
    assert tool.parse_args(['--sweep', 'all', '--arch', 'b2']).markdown != tool.SHIPPED_TABLE
    asked = tool.parse_args(['--sweep', 'mmdet', '--only', 'fcos', '--markdown', 'x.md'])
    assert asked.markdown == Path('x.md')


def test_sweep_builds_are_quiet(capsys):
    """Model builds log every parameter's init at INFO: silenced while the sweep builds."""
    from mmengine.logging import MMLogger, print_log

    from pvt_mm.swap.sweep import quiet_builds
    logger = MMLogger.get_instance('test_quiet_sweep', log_level='INFO')
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        with quiet_builds():
            print_log('init message', logger='current')
            print('printed by a package')
        print_log('after', logger='current')
    finally:
        logger.removeHandler(handler)
    assert seen == ['after']
    assert 'printed by a package' not in capsys.readouterr().out


def test_swap_is_one_package_with_the_public_names():
    from pvt_mm import swap
    assert (ROOT / 'pvt_mm/swap/__init__.py').is_file()
    assert not (ROOT / 'pvt_mm/swap.py').exists()
    for name in ('swap_config', 'swap_overrides', 'write_swapped_config', 'load_stock_config',
                 'SwapError'):
        assert callable(getattr(swap, name))
