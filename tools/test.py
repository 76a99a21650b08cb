"""Test (and evaluate) an MMDetection or MMSegmentation model with a pvt_mm backbone.

Same flags as mmdet's / mmseg's ``tools/test.py``::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE|DIR]
        [--show-dir DIR] [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}] [--debug]

An end-to-end .onnx (tools/export_onnx.py --end2end) in place of the checkpoint runs the
config's test data and evaluator on it (pvt_mm/deploy/evaluate.py)::

    python tools/test.py CONFIG MODEL.onnx [--runtime onnxruntime|openvino] [--work-dir DIR]
"""
import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise
import sys

from pvt_mm.engine.cli import test_tool

if __name__ == '__main__':
    if len(sys.argv) > 2 and sys.argv[2].endswith('.onnx'):  # an end-to-end deployed model
        from pvt_mm.deploy.evaluate import tool as test_onnx_tool
        sys.exit(test_onnx_tool())
    sys.exit(test_tool())  # input errors: one message, no traceback (--debug shows it)
