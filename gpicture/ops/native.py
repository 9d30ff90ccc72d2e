"""Loader of the compiled ``gpicture._native`` extension (built from ``csrc/``).

The extension is optional: when it is absent (not built, or built for another
torch) every op falls back to its pure-torch reference and warns once.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType


@functools.cache
def load_native() -> ModuleType | None:
    """The native module, or ``None`` (with one warning) if it cannot be imported."""
    try:
        from gpicture import _native  # type: ignore[attr-defined]  # lazy: the optional built extension
    except ImportError as exc:  # not built, or an ABI mismatch
        warnings.warn(
            f"gpicture native ops unavailable ({exc}); using the pure-torch references. "
            "Run `make setup` to build csrc/.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return _native


def native_available() -> bool:
    """Whether the compiled ops of ``csrc/`` can be used."""
    return load_native() is not None
