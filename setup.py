"""pvt_mm: Pyramid Vision Transformer (v1, v2) backbones for MMDetection 3.x / MMSegmentation 1.x."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r"__version__ = '([^']+)'", (HERE / "pvt_mm" / "version.py").read_text()).group(1)

setup(
    name="pvt_mm",
    version=VERSION,
    description="PVT v1/v2 backbones for MMDetection 3.x and MMSegmentation 1.x",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["pvt_mm", "pvt_mm.*", "pvt_mm_runtime"]),
    # the native kernels' sources, compiled on the user's machine by `make install`
    package_data={"pvt_mm.models.fast": ["csrc/*.cpp", "csrc/*.h"]},
    python_requires=">=3.9",
    # No OpenMMLab distribution is named: mmengine, mmcv, mmdet and mmsegmentation come either
    # from OpenMMLab or from the maintained onedl-* forks (same import names), and a name here
    # would make pip install one family over the other. pvt_mm checks the installed versions at
    # import (pvt_mm/_compat.py; docs/install.md); `make install` pins OpenMMLab's stack.
    install_requires=[
        # 2.7: torch.compiler.is_exporting (deploy/ops.py); 2.5-2.6: torch.onnx.export's dynamo
        # and custom_translation_table; 2.4: get_autocast_dtype, custom_op, safe-globals API
        "torch>=2.7",
        "timm>=1.0.3",  # timm.models._features.feature_take_indices
        "numpy",
        "safetensors",
        "ftfy",  # mmseg imports these without declaring them
        "regex",
    ],
    extras_require={"tests": ["pytest"]},
    license="Apache-2.0",
    zip_safe=False,
)
