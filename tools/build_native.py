"""Compile pvt_mm's native attention kernel for this CPU and torch (``make install`` runs it).

    python tools/build_native.py [--verbose]

Prints where it was built and which attention the CPU inference path now uses; exits 1 (after
one line naming the compiler's error) when it cannot be built: inference then computes attention
with oneDNN matmuls. See pvt_mm/models/layers/native.py.
"""
import sys

from pvt_mm.models.layers.native import main

if __name__ == '__main__':
    sys.exit(main())
