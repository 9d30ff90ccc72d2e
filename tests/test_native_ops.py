"""The native ops of csrc/ equal their pure-torch references."""

from __future__ import annotations

import pytest
import torch

from gpicture.ops import in_group_index, in_group_index_reference, native_available
from gpicture.ops.native import load_native


def test_native_extension_is_built() -> None:
    # `make setup` builds csrc/ on every machine; the suite must exercise the native path.
    assert native_available(), "gpicture._native was not built"


def test_reference_small_case() -> None:
    groups = torch.tensor([2, 0, 2, 2, 0, 5])
    assert in_group_index_reference(groups).tolist() == [0, 0, 1, 2, 1, 0]


@pytest.mark.parametrize("n,g", [(0, 1), (1, 1), (17, 1), (1000, 7), (5000, 4000), (20000, 300)])
def test_native_equals_reference(n: int, g: int) -> None:
    gen = torch.Generator().manual_seed(n + g)
    groups = torch.randint(0, g, (n,), generator=gen)
    native = load_native()
    assert native is not None
    ref = in_group_index_reference(groups)
    assert torch.equal(native.in_group_index(groups, -1), ref)
    assert torch.equal(native.in_group_index(groups, g), ref)
    assert torch.equal(in_group_index(groups), ref)


def test_native_rejects_bad_ids() -> None:
    native = load_native()
    with pytest.raises(RuntimeError, match="num_groups"):
        native.in_group_index(torch.tensor([0, 5]), 3)
    with pytest.raises(RuntimeError, match=">= 0"):
        native.in_group_index(torch.tensor([0, -1]), 3)


def test_fallback_without_native(monkeypatch) -> None:
    import gpicture.ops.group_index as mod

    monkeypatch.setattr(mod, "load_native", lambda: None)
    groups = torch.tensor([1, 1, 0, 1])
    assert mod.in_group_index(groups).tolist() == [0, 1, 0, 2]
