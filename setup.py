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
    packages=find_packages(include=["pvt_mm", "pvt_mm.*"]),
    # the native attention kernel's source, compiled on the user's machine by `make install`
    package_data={"pvt_mm.models.layers": ["csrc/*.cpp", "csrc/*.h"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "mmengine>=0.10.0,<1.0",
        "mmcv>=2.0.0,<2.2.0",
        "mmdet>=3.0.0,<3.4.0",
        "mmsegmentation>=1.0.0,<1.3.0",
        "timm>=0.9",
        "safetensors",
        "ftfy",
        "regex",
    ],
    extras_require={"tests": ["pytest"]},
    license="Apache-2.0",
    zip_safe=False,
)
