"""Train an MMDetection or MMSegmentation model with a pvt_mm backbone.

Same flags as mmdet's / mmseg's ``tools/train.py``::

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]
"""
import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise
from pvt_mm.engine.cli import train_main

if __name__ == '__main__':
    train_main()
