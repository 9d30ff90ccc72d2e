"""Imports of third-party packages that need a shim on this stack.

MinkowskiEngine 0.5.4 imports ``collections.Sequence``, which Python 3.10 removed;
spconv-cu118 on a CPU-only torch must use the ``Native`` algorithm because the
default one asks for CUDA streams.
"""

from __future__ import annotations

import collections
import collections.abc
import warnings
from types import ModuleType


def import_minkowski() -> ModuleType:
    """Import MinkowskiEngine after aliasing ``collections.Sequence``."""
    if not hasattr(collections, "Sequence"):
        collections.Sequence = collections.abc.Sequence  # type: ignore[attr-defined]
    # Its CPU-only notice and torch's sparse-COO deprecation repeat on every call.
    warnings.filterwarnings("ignore", message=".*compiled with CPU_ONLY.*")
    warnings.filterwarnings("ignore", message=".*torch.sparse.SparseTensor.*")
    import MinkowskiEngine as ME  # noqa: N817  (the package's own convention)

    return ME


def spconv_algo() -> object:
    """The spconv convolution algorithm that works on this device.

    ``ConvAlgo.Native`` runs everywhere (CPU included); on CUDA spconv's default
    implicit-GEMM path is faster, so it is kept there.
    """
    import torch
    from spconv.pytorch import ConvAlgo

    return ConvAlgo.MaskImplicitGemm if torch.cuda.is_available() else ConvAlgo.Native
