"""gpicture.ops.scatter: the pure-torch scatter_max / scatter_mean against torch_scatter (values,
argmax, gradients; empty segments, ties, other dims and dtypes) and against a per-segment loop,
and the VFE giving the same features and gradients on either."""

from __future__ import annotations

import pytest
import torch

from gpicture.models.vfe import DynamicVFE
from gpicture.ops import scatter as ops
from gpicture.ops.scatter import scatter_max_reference, scatter_mean_reference



@pytest.fixture
def torch_scatter():  # noqa: ANN201  (the reference: make setup always builds it, so no skip)
    import torch_scatter

    return torch_scatter


def _cases(seed: int = 0):
    """(src, index, dim, dim_size): random float / tie-heavy integer-valued inputs, empty
    segments (dim_size beyond the indices), the reduced dim first, last and in the middle."""
    g = torch.Generator().manual_seed(seed)
    for trial in range(40):
        n = int(torch.randint(0, 30, (1,), generator=g))
        c = int(torch.randint(1, 4, (1,), generator=g))
        v = int(torch.randint(1, 10, (1,), generator=g)) + 3  # a few more segments than indices reach
        base = (torch.randn(n, c, generator=g, dtype=torch.float64) if trial % 2 else
                torch.randint(-2, 3, (n, c), generator=g).double())  # small integers: many ties
        index = torch.randint(0, v - 3, (n,), generator=g)
        yield base, index, 0, v
        yield base.t().contiguous(), index, -1, v
        yield base.unsqueeze(0).repeat(2, 1, 1), index, 1, v


def _backward(fn, src: torch.Tensor, weight_seed: int) -> tuple[torch.Tensor, ...]:
    x = src.clone().requires_grad_()
    res = fn(x)
    out = res[0] if isinstance(res, tuple) else res
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(weight_seed), dtype=out.dtype)
    (out * w).sum().backward()
    return (*(res if isinstance(res, tuple) else (res,)), x.grad)


def test_scatter_max_matches_torch_scatter(torch_scatter) -> None:
    for k, (src, index, dim, v) in enumerate(_cases()):
        want = _backward(lambda x: torch_scatter.scatter_max(x, index, dim=dim, dim_size=v), src, k)
        got = _backward(lambda x: scatter_max_reference(x, index, dim=dim, dim_size=v), src, k)
        for name, a, b in zip(("values", "argmax", "grad"), want, got, strict=True):
            assert torch.equal(a, b), (k, name, a, b)


def test_scatter_mean_matches_torch_scatter(torch_scatter) -> None:
    for k, (src, index, dim, v) in enumerate(_cases(1)):
        want = _backward(lambda x: torch_scatter.scatter_mean(x, index, dim=dim, dim_size=v), src, k)
        got = _backward(lambda x: scatter_mean_reference(x, index, dim=dim, dim_size=v), src, k)
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)


def test_ties_empty_segments_and_special_values(torch_scatter) -> None:
    src = torch.tensor([[1.0], [3.0], [3.0], [2.0], [float("nan")], [-float("inf")], [5.0]], requires_grad=True)
    index = torch.tensor([0, 0, 0, 0, 2, 3, 4])
    values, arg = scatter_max_reference(src, index, dim=0, dim_size=6)
    # ties: the first position; empty segments (1, 5), NaN and -inf alone: 0 and argmax n, as torch_scatter's kernel
    assert values[:, 0].tolist() == [3.0, 0.0, 0.0, 0.0, 5.0, 0.0]
    assert arg[:, 0].tolist() == [1, 7, 7, 7, 6, 7]
    values.sum().backward()
    assert src.grad[:, 0].tolist() == [0, 1, 0, 0, 0, 0, 1]  # the whole gradient to the argmax
    want_v, want_a = torch_scatter.scatter_max(src.detach(), index, dim=0, dim_size=6)
    assert torch.equal(values.detach(), want_v) and torch.equal(arg, want_a)
    mean = scatter_mean_reference(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 0, 2]), dim_size=4)
    assert mean.tolist() == [1.5, 0.0, 4.0, 0.0]


def test_integer_full_index_and_empty_inputs(torch_scatter) -> None:
    g = torch.Generator().manual_seed(3)
    src = torch.randint(-5, 6, (12, 3), generator=g)
    index = torch.randint(0, 4, (12, 3), generator=g)  # a full-shape index, not broadcast
    want = torch_scatter.scatter_mean(src, index, 0, dim_size=5)
    assert torch.equal(scatter_mean_reference(src, index, 0, dim_size=5), want)
    want_max = torch_scatter.scatter_max(src, index, 0, dim_size=5)
    for a, b in zip(scatter_max_reference(src, index, 0, dim_size=5), want_max, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(scatter_mean_reference(src, index[:, 0], 0), torch_scatter.scatter_mean(src, index[:, 0], 0))
    empty, idx = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    values, arg = scatter_max_reference(empty, idx, 0, dim_size=3)
    assert values.shape == (3, 4) and not values.any() and not arg.any()
    assert scatter_mean_reference(empty, idx, 0, dim_size=3).shape == (3, 4)


def test_against_a_loop_per_segment() -> None:
    """Independent of torch_scatter: every segment's max / first argmax / mean by hand."""
    g = torch.Generator().manual_seed(4)
    src = torch.randint(-3, 4, (200, 5), generator=g).float()
    index = torch.randint(0, 40, (200,), generator=g)
    values, arg = scatter_max_reference(src, index, 0, dim_size=45)
    mean = scatter_mean_reference(src, index, 0, dim_size=45)
    for s in range(45):
        rows = (index == s).nonzero()[:, 0]
        if not len(rows):
            assert not values[s].any() and (arg[s] == 200).all() and not mean[s].any()
            continue
        best = src[rows].max(0).values
        assert torch.equal(values[s], best)
        first = torch.stack([rows[(src[rows, c] == best[c]).nonzero()[0, 0]] for c in range(5)])
        assert torch.equal(arg[s], first)
        torch.testing.assert_close(mean[s], src[rows].mean(0))


def test_low_precision_mean_is_summed_in_float32() -> None:
    src = torch.full((1000, 2), 0.5).to(torch.bfloat16)
    mean = scatter_mean_reference(src, torch.zeros(1000, dtype=torch.long), 0, dim_size=1)
    assert mean.dtype == torch.bfloat16 and torch.equal(mean, torch.full((1, 2), 0.5, dtype=torch.bfloat16))
    values, _ = scatter_max_reference(src, torch.zeros(1000, dtype=torch.long), 0, dim_size=1)
    assert values.dtype == torch.bfloat16


def test_the_vfe_is_the_same_on_either(monkeypatch, torch_scatter) -> None:
    torch.manual_seed(0)
    vfe = DynamicVFE(2, (0.5, 0.5, 0.5), (-10.0, -10.0, -2.0, 10.0, 10.0, 2.0), (16, 16)).double()
    g = torch.Generator().manual_seed(1)
    lo = torch.tensor([-10.0, -10.0, -2.0], dtype=torch.float64)
    pts = torch.rand(500, 3, generator=g, dtype=torch.float64) * torch.tensor([20.0, 20.0, 4.0]) + lo
    feats = torch.rand(500, 2, generator=g, dtype=torch.float64)
    ijk = ((pts - lo) / 0.5).floor().long().clamp(0, 39)
    uniq, pv = torch.unique(ijk[:, 2] * 1600 + ijk[:, 1] * 40 + ijk[:, 0], return_inverse=True)
    coords = torch.stack([torch.zeros_like(uniq), uniq // 1600, uniq // 40 % 40, uniq % 40], 1).int()
    pv[::50] = -1  # some points ignored

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        vfe.zero_grad()
        out = vfe(pts, feats, pv, coords)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return out.detach(), [p.grad.clone() for p in vfe.parameters()]

    assert ops.torch_scatter_available()
    want, want_grads = run()
    monkeypatch.setattr(ops, "_torch_scatter", None)  # the dispatch now takes the pure-torch path
    got, got_grads = run()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
