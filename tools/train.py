"""Train an MMDetection or MMSegmentation model with a pvt_mm backbone.

Same flags as mmdet's / mmseg's ``tools/train.py``::

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}] [--debug]
"""
import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise
import sys

from pvt_mm.engine.cli import train_tool

if __name__ == '__main__':
    sys.exit(train_tool())  # input errors: one message, no traceback (--debug shows it)
