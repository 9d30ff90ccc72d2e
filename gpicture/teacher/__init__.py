"""The GPICTURE teacher: a frozen Seal-pre-trained Res16UNet34C and its per-voxel feature cache.

``SealTeacher`` is imported lazily: MinkowskiEngine brings OpenBLAS threads that slow
every torch op in the process, so code that only reads teacher caches never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpicture.teacher.seal import SealTeacher

__all__ = ["SealTeacher"]


def __getattr__(name: str) -> Any:
    if name == "SealTeacher":
        from gpicture.teacher.seal import SealTeacher  # lazy: MinkowskiEngine only when the teacher is used

        return SealTeacher
    raise AttributeError(f"module 'gpicture.teacher' has no attribute {name!r}")
