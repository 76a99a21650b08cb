"""Compile pvt_mm's native inference kernels (attention, v1 MLP) for this CPU and torch
(``make install`` runs it).

    python tools/build_native.py [--verbose]

Prints where they were built and which kernels the CPU inference path now uses; exits 1 (after
one line naming the compiler's error) when they cannot be built: inference then computes
attention and MLPs with oneDNN matmuls. See pvt_mm/models/fast/native.py.
"""
import sys

from pvt_mm.models.fast.native import main

if __name__ == '__main__':
    sys.exit(main())
