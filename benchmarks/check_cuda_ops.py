"""Parity of the CUDA native ops with their CPU versions and references, alone.

Run: python benchmarks/check_cuda_ops.py   (PYTHONPATH=. where gpicture is not installed)
The same comparisons as the "kernels" section of ``benchmarks/gpu_check.py`` (which also
builds csrc/ with CUDA first): ``_gpu_kernels.check_kernels``. Exits 1 on any mismatch; without
a CUDA build or device it compares the native CPU kernels with the references and says so.
"""

from __future__ import annotations

import sys

import torch

from _gpu_kernels import check_kernels


def main() -> int:
    return 1 if check_kernels(large=torch.cuda.is_available())["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
