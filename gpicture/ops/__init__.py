"""Small tensor ops, each with a native implementation in ``csrc/`` where built
and a pure-torch reference that is always available."""

from gpicture.ops.group_index import in_group_index, in_group_index_reference
from gpicture.ops.native import native_available

__all__ = ["in_group_index", "in_group_index_reference", "native_available"]
