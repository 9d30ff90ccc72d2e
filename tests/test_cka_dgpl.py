"""Linear CKA and the differential gate (DGPL) of the teacher-loss weight β_t."""

from __future__ import annotations

import io
import math

import pytest
import torch

from gpicture.models.cka import layerwise_cka, linear_cka
from gpicture.models.dgpl import DifferentialGate, gate


def gram_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA through the n x n Gram matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((k * l_).sum() / torch.sqrt((k * k).sum() * (l_ * l_).sum()))


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_identical_inputs_give_one() -> None:
    x = rand(200, 32)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x.clone()).dtype == torch.float64


def test_invariances() -> None:
    x, y = rand(300, 24, seed=1).double(), rand(300, 16, seed=2).double()  # float64: exact transforms
    y = y + 0.5 * x[:, :16]  # some shared signal
    base = linear_cka(x, y).item()
    assert 0.05 < base < 0.95
    q, _ = torch.linalg.qr(rand(24, 24, seed=3).double())
    assert linear_cka(x @ q, y).item() == pytest.approx(base, abs=1e-10)
    q2, _ = torch.linalg.qr(rand(16, 16, seed=4).double())
    assert linear_cka(x, y @ q2).item() == pytest.approx(base, abs=1e-10)
    assert linear_cka(x * 37.5, y).item() == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, y * 1e-3).item() == pytest.approx(base, abs=1e-10)
    assert linear_cka(x + 100.0, y - 3.0).item() == pytest.approx(base, abs=1e-10)  # centred
    assert linear_cka(y, x).item() == pytest.approx(base, abs=1e-12)  # symmetric


@pytest.mark.parametrize("n,d1,d2", [(50, 8, 8), (120, 64, 16), (40, 100, 3)])
def test_matches_gram_matrix_formula(n: int, d1: int, d2: int) -> None:
    x, y = rand(n, d1, seed=n), rand(n, d2, seed=n + 1)
    y[:, : min(d1, d2)] += x[:, : min(d1, d2)]
    assert linear_cka(x, y).item() == pytest.approx(gram_cka(x, y), abs=1e-6)
    assert linear_cka(x.float(), y.half()).item() == pytest.approx(gram_cka(x, y.half()), abs=1e-6)


def test_constant_input_gives_zero() -> None:
    x = rand(100, 8)
    const = torch.full((100, 5), 0.1)
    assert linear_cka(const, x).item() == 0.0
    assert linear_cka(x, const).item() == 0.0
    assert linear_cka(const, const).item() == 0.0
    assert not math.isnan(linear_cka(torch.zeros(100, 4), torch.zeros(100, 4)).item())
    # a constant column next to varying ones is ignored, not noise
    mixed = torch.cat([x, torch.full((100, 1), 0.1)], 1)
    assert linear_cka(mixed, x).item() == pytest.approx(1.0, abs=1e-12)


def test_layerwise() -> None:
    a = [rand(64, 8, seed=i) for i in range(3)]
    b = [a[0], rand(64, 4, seed=9), a[2] * 2]
    out = layerwise_cka(a, b)
    assert out.shape == (3,) and out[0].item() == pytest.approx(1.0) and out[2].item() == pytest.approx(1.0)
    assert out[1].item() == pytest.approx(linear_cka(a[1], b[1]).item())
    with pytest.raises(ValueError):
        layerwise_cka(a, b[:2])
    with pytest.raises(ValueError):
        linear_cka(rand(10, 2), rand(11, 2))


def test_gate() -> None:
    assert gate(0.0) == 0.0 and gate(0.19) == 0.0
    assert gate(0.2) == 0.0
    for c in (0.25, 0.5, 0.9, 1.0):
        assert gate(c) == pytest.approx(1 - math.exp(-10.0 * (c - 0.2)))
    assert gate(0.5, delta=0.4, gamma=3.0) == pytest.approx(1 - math.exp(-0.3))


def probe(epoch_seed: int, n: int = 80) -> list[torch.Tensor]:
    return [rand(n, 16, seed=epoch_seed * 10 + layer) for layer in range(6)]


def test_differential_gate_schedule() -> None:
    dg = DifferentialGate(first_layers=4)
    assert dg.beta(0) == 0.0 and dg.beta(1) == 0.0 and dg.last_c_r is None
    acts = {e: probe(e) for e in range(4)}
    acts[1] = [a + 0.1 * b for a, b in zip(acts[0], acts[1], strict=True)]
    acts[2] = [a.clone() for a in acts[1]]  # no change between epochs 1 and 2: c_r = 1
    dg.record(0, acts[0])
    dg.record(1, acts[1])
    c_r = layerwise_cka(acts[1][:4], acts[0][:4]).mean().item()
    assert dg.beta(2) == pytest.approx(gate(c_r)) and dg.last_c_r == pytest.approx(c_r)
    assert dg.beta(2) > 0
    dg.record(2, acts[2])
    assert dg.last_c_r == pytest.approx(c_r)
    assert dg.beta(3) == pytest.approx(1 - math.exp(-10 * 0.8)) and dg.last_c_r == pytest.approx(1.0)
    dg.record(3, acts[3])  # unrelated activations: c_r small, gate closed
    assert dg.beta(4) == 0.0 and dg.last_c_r < 0.2
    with pytest.raises(RuntimeError, match="epoch"):
        dg.beta(2)  # epoch 0's activations were dropped: only the last two epochs are kept
    with pytest.raises(ValueError):
        dg.record(5, acts[0][:3])


def test_differential_gate_keeps_detached_cpu_copies() -> None:
    dg = DifferentialGate(first_layers=2)
    x = torch.randn(10, 4, requires_grad=True)
    acts = [x * 2, x + 1, x]
    dg.record(0, acts)
    stored = dg.state_dict()["records"][0]
    assert len(stored) == 2 and not stored[0].requires_grad and stored[0].device.type == "cpu"
    with torch.no_grad():
        x.add_(1.0)
    assert not torch.equal(stored[1], (x + 1).detach())  # a copy, unaffected by later changes


def test_differential_gate_state_round_trip() -> None:
    dg = DifferentialGate()
    dg.record(0, probe(0))
    dg.record(1, probe(1))
    dg.beta(2)
    dg.record(2, probe(2))
    buf = io.BytesIO()
    torch.save(dg.state_dict(), buf)
    buf.seek(0)
    resumed = DifferentialGate()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.last_c_r == dg.last_c_r
    assert resumed.beta(3) == dg.beta(3) and resumed.last_c_r == dg.last_c_r
    resumed.record(3, probe(7))
    dg.record(3, probe(7))
    assert resumed.beta(4) == dg.beta(4)
    with pytest.raises(ValueError, match="first_layers"):
        DifferentialGate(first_layers=3).load_state_dict(dg.state_dict())
