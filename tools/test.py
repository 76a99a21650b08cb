"""Test (and evaluate) an MMDetection or MMSegmentation model with a pvt_mm backbone.

Same flags as mmdet's / mmseg's ``tools/test.py``::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE|DIR]
        [--show-dir DIR] [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]
"""
import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise
from pvt_mm.engine.cli import test_main

if __name__ == '__main__':
    test_main()
