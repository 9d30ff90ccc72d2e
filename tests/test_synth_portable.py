"""gpicture.synth.portable: the CPU-independent math of the synthetic world is accurate.

References are NumPy's long-double (x87, 64-bit mantissa) results rounded to float64; errors are
in units of the last place (ulp) of the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpicture.synth import portable as pm

RNG = np.random.default_rng(0)


def _ulps(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(got - ref) / np.spacing(np.abs(ref))


def _ref(fn, *args) -> np.ndarray:
    return fn(*(np.asarray(a, dtype=np.longdouble) for a in args)).astype(np.float64)


def test_sin_cos_within_two_ulps_and_exact_where_sin_vanishes_to_1e_29() -> None:
    x = np.concatenate([RNG.uniform(-60, 60, 200_000), RNG.uniform(-1e-4, 1e-4, 10_000), np.arange(-100, 100) * np.pi / 4])
    s, c = pm.sincos(x)
    for got, ref in ((s, _ref(np.sin, x)), (c, _ref(np.cos, x))):
        err = _ulps(got, ref)
        big = np.abs(ref) > 1e-12  # near a multiple of pi the error is absolute: below 1e-29
        assert err[big].max() <= 2 and np.abs(got - ref)[~big].max() < 1e-28
    assert pm.sin(0.0) == 0.0 and pm.cos(0.0) == 1.0 and np.isnan(pm.sin(np.nan))
    with pytest.raises(ValueError, match=r"\|angle\| must be"):
        pm.sin(1e7)


def test_arctan2_and_arcsin_within_two_ulps_with_cs_quadrants_and_signed_zeros() -> None:
    y, x = RNG.normal(size=(2, 200_000)) * RNG.choice([1e-6, 1.0, 1e4], size=(2, 200_000))
    assert _ulps(pm.arctan2(y, x), _ref(np.arctan2, y, x)).max() <= 2
    for yy, xx in [(0.0, 0.0), (-0.0, 0.0), (0.0, -0.0), (-0.0, -0.0), (1.0, 0.0), (-1.0, 0.0), (0.0, -1.0),
                   (-0.0, -1.0), (1.0, -1.0), (-1.0, -1.0), (3.0, 3.0)]:
        got, ref = pm.arctan2(yy, xx), np.arctan2(yy, xx)
        assert got == ref and np.signbit(got) == np.signbit(ref), (yy, xx)
    u = np.concatenate([RNG.uniform(-1, 1, 200_000), [-1.0, 1.0, 0.0]])
    assert _ulps(pm.arcsin(u), _ref(np.arcsin, u))[u != 0].max() <= 2


def test_exp_within_one_ulp_and_its_limits() -> None:
    x = np.concatenate([RNG.uniform(-700, 700, 200_000), RNG.uniform(-1, 1, 10_000)])
    assert _ulps(pm.exp(x), _ref(np.exp, x)).max() <= 1
    np.testing.assert_array_equal(pm.exp(np.array([0.0, -800.0, 800.0])), [1.0, 0.0, np.inf])
    assert np.isnan(pm.exp(np.nan))


def test_matrix_helpers_match_numpy() -> None:
    a, b = RNG.normal(size=(7, 4, 4)), RNG.normal(size=(4, 4))
    np.testing.assert_allclose(pm.matmul(a, b), a @ b, rtol=0, atol=1e-14)
    np.testing.assert_allclose(pm.matmul(b, RNG.normal(size=(4, 9))).shape, (4, 9))
    v = RNG.normal(size=3)
    np.testing.assert_allclose(pm.matmul(b[:3, :3], v), b[:3, :3] @ v, atol=1e-14)
    yaw, pitch = 0.7, -0.1
    (sy, cy), (sp, cp) = pm.sincos(yaw), pm.sincos(pitch)
    t = np.eye(4)
    t[:3, :3] = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]]) @ np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    t[:3, 3] = [3.0, -2.0, 1.5]
    np.testing.assert_allclose(pm.rigid_inverse(t), np.linalg.inv(t), atol=1e-14)
    np.testing.assert_allclose(pm.apply(RNG.normal(size=(5, 3)), t[:3, :3], t[:3, 3]).shape, (5, 3))
    assert pm.det3(t) == pytest.approx(1.0) and pm.norm(np.array([3.0, 4.0])) == 5.0
    np.testing.assert_allclose(pm.hypot(3.0, 4.0), 5.0)
    with pytest.raises(ValueError, match="do not align"):
        pm.matmul(np.ones((2, 3)), np.ones((2, 3)))
