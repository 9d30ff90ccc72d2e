"""Math whose results do not depend on the CPU: the synthetic world's sin, cos, atan2, asin, exp
and small matrix products, from IEEE-754 basic operations only.

Why: ``gpicture synth`` must write the same bytes for the same seed on every machine, so that
two teammates' synthetic defaults hash the same under DVC. NumPy picks its transcendental
kernels at run time by the CPU's features (SVML / universal-intrinsics loops on AVX512_SKX,
AVX2 + FMA3, or the scalar libm on older CPUs), and ``@``, ``np.linalg`` and ``np.dot`` go to
BLAS / LAPACK, whose kernels (OpenBLAS' ``OPENBLAS_CORETYPE``: Haswell, SkylakeX, ...) sum in
different orders or with fused multiply-adds. Each of these differs from another in the last
bit of some results, and a last bit that moves a ray across a box edge or a bin boundary changes
the points written. Additions, subtractions, multiplications, divisions, square roots, floor and
comparisons are correctly rounded by IEEE 754 on every machine and every vector width, and
NumPy applies each as its own ufunc (nothing is contracted into a fused multiply-add), so
everything here is built from those alone, in a fixed order:

* ``sin`` / ``cos``: Cody-Waite reduction by pi/2 (three-part constant, exact for |x| < 2**19
  pi/2, far beyond the angles of a scene) and fdlibm's minimax kernels on [-pi/4, pi/4];
* ``arctan2`` / ``arcsin``: fdlibm's atan reduction (breakpoints 7/16, 11/16, 19/16, 39/16 with
  two-part table constants) and its degree-22 odd polynomial;
* ``exp``: fdlibm's reduction by ln 2 (two-part) and its rational kernel, scaled by ``ldexp``
  (exact);
* ``matmul`` / ``apply`` / ``rigid_inverse`` / ``norm``: products summed term by term in index
  order.

Accuracy: within 2 ulp of the correctly rounded value (exp: 1; sin within 1e-15 of a multiple of
pi: an absolute error below 1e-28), checked against long-double results in
tests/test_synth_portable.py, far below anything the simulation resolves.
Not covered: NumPy's random generators (their normal, Poisson and log-normal draws call the C
library's exp / log in rare rejection branches: glibc's results are correctly rounded in
practice, whatever its FMA / non-FMA variant) — the log-normal's own exp is done here.
All functions take and return float64 arrays (scalars are accepted), elementwise.
"""

from __future__ import annotations

import numpy as np

# pi / 2 in three parts of 33 bits (fdlibm's pio2_1, pio2_2, pio2_3): k * part is exact for |k| < 2**20.
_PIO2_1 = 1.57079632673412561417e00
_PIO2_2 = 6.07710050630396597660e-11
_PIO2_3 = 2.02226624871116645580e-21
_TWO_OVER_PI = 6.36619772367581382433e-01
_MAX_REDUCED = 2.0**19 * np.pi / 2  # beyond this the three-part reduction is no longer exact

# fdlibm __kernel_sin / __kernel_cos minimax coefficients on [-pi/4, pi/4]
_S = (-1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04,
      2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10)
_C = (4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05,
      -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11)

# fdlibm atan: table atan(0.5), atan(1), atan(1.5), atan(inf) in two parts, and the odd polynomial
_ATAN_HI = np.array([4.63647609000806093515e-01, 7.85398163397448278999e-01, 9.82793723247329054082e-01,
                     1.57079632679489655800e00])
_ATAN_LO = np.array([2.26987774529616870924e-17, 3.06161699786838301793e-17, 1.39033110312309984516e-17,
                     6.12323399573676603587e-17])
_AT = (3.33333333333329318027e-01, -1.99999999998764832476e-01, 1.42857142725034663711e-01,
       -1.11111104054623557880e-01, 9.09088713343650656196e-02, -7.69187620504482999495e-02,
       6.66107313738753120669e-02, -5.83357013379057348645e-02, 4.97687799461593236017e-02,
       -3.65315727442169155270e-02, 1.62858201153657823623e-02)
_PI_HI = 3.14159265358979311600e00
_PI_LO = 1.22464679914735317720e-16
_PIO2_HI = 1.57079632679489655800e00
_PIO2_LO = 6.12323399573676603587e-17

# fdlibm exp: ln 2 in two parts and the rational kernel's coefficients
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_P = (1.66666666666666019037e-01, -2.77777777770155933842e-03, 6.61375632143793436117e-05,
      -1.65339022054652515390e-06, 4.13813679705723846039e-08)


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _poly(z: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    """c0 + z (c1 + z (c2 + ...)) by Horner, in this order."""
    acc = np.full_like(z, coeffs[-1])
    for c in coeffs[-2::-1]:
        acc = acc * z + c
    return acc


def _reduce_pio2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(r, quadrant) with x = quadrant * pi/2 + r, |r| <= pi/4 (about), quadrant mod 4 as int64."""
    if x.size and not (np.abs(x[np.isfinite(x)]) < _MAX_REDUCED).all():
        raise ValueError(f"portable sin / cos: |angle| must be < {_MAX_REDUCED:.3g} rad")
    k = np.floor(x * _TWO_OVER_PI + 0.5)
    r = ((x - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_3
    return r, np.mod(np.where(np.isfinite(k), k, 0.0), 4.0).astype(np.int64)  # NaN / inf: r is NaN


def _kernels(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = r * r
    s = r + (r * z) * _poly(z, _S)
    c = (1.0 - 0.5 * z) + (z * z) * _poly(z, _C)
    return s, c


def sincos(x) -> tuple[np.ndarray, np.ndarray]:
    """(sin x, cos x) of angles x in radians (|x| < 8e5)."""
    x = _f64(x)
    r, q = _reduce_pio2(x)
    s, c = _kernels(r)
    sin = np.choose(q, (s, c, -s, -c))
    cos = np.choose(q, (c, -s, -c, s))
    return sin, cos


def sin(x) -> np.ndarray:
    """sin x, x in radians."""
    return sincos(x)[0]


def cos(x) -> np.ndarray:
    """cos x, x in radians."""
    return sincos(x)[1]


def _atan_pos(t: np.ndarray) -> np.ndarray:
    """atan t for t >= 0 (finite or inf), fdlibm's reduction and polynomial."""
    t = np.asarray(t, dtype=np.float64)
    idx = np.select([t < 7 / 16, t < 11 / 16, t < 19 / 16, t < 39 / 16], [-1, 0, 1, 2], 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.select([idx == 0, idx == 1, idx == 2, idx == 3],
                      [(2.0 * t - 1.0) / (2.0 + t), (t - 1.0) / (t + 1.0), (t - 1.5) / (1.0 + 1.5 * t), -1.0 / t], t)
    z = u * u
    w = z * z
    s1 = z * _poly(w, _AT[0::2])
    s2 = w * _poly(w, _AT[1::2])
    direct = u - u * (s1 + s2)
    j = np.maximum(idx, 0)
    table = _ATAN_HI[j] - ((u * (s1 + s2) - _ATAN_LO[j]) - u)
    return np.where(idx < 0, direct, table)


def arctan2(y, x) -> np.ndarray:
    """atan2(y, x) in (-pi, pi], radians, with the quadrant of (x, y) (signed zeros as C's atan2)."""
    y, x = np.broadcast_arrays(_f64(y), _f64(x))
    ay, ax = np.abs(y), np.abs(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        small = ay <= ax  # |y/x| <= 1: atan(|y|/|x|); else pi/2 - atan(|x|/|y|), both arguments in [0, 1]
        a = np.where(small, _atan_pos(ay / ax), _PIO2_HI - (_atan_pos(ax / ay) - _PIO2_LO))
    a = np.where((ay == 0) & (ax == 0), 0.0, a)
    left = np.signbit(x)  # x < 0 or x = -0: the angle is measured from the negative axis
    a = np.where(left, _PI_HI - (a - _PI_LO), a)
    return np.where(np.signbit(y), -a, a)


def arcsin(x) -> np.ndarray:
    """asin x for x in [-1, 1], radians."""
    x = _f64(x)
    return arctan2(x, np.sqrt((1.0 - x) * (1.0 + x)))


def exp(x) -> np.ndarray:
    """e ** x (0 below -745, inf above 709.78)."""
    x = _f64(x)
    k = np.floor(x * _INV_LN2 + 0.5)
    k = np.clip(np.where(np.isfinite(k), k, 0.0), -1100.0, 1100.0)
    hi = x - k * _LN2_HI
    lo = k * _LN2_LO
    r = hi - lo
    z = r * r
    c = r - z * _poly(z, _P)
    e = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)
    with np.errstate(over="ignore", under="ignore"):
        # 2**k in two exact steps, so a k past the exponent range gives 0 or inf, not a wrong finite value
        half = np.trunc(k / 2.0)
        out = np.ldexp(np.ldexp(e, half.astype(np.int64)), (k - half).astype(np.int64))
    out = np.where(x > 709.782712893384, np.inf, np.where(x < -745.1332191019412, 0.0, out))
    return np.where(np.isnan(x), np.nan, out)


def hypot(x, y) -> np.ndarray:
    """sqrt(x**2 + y**2) (no overflow protection: scene coordinates are metres)."""
    x, y = _f64(x), _f64(y)
    return np.sqrt(x * x + y * y)


def norm(v, axis: int = -1) -> np.ndarray:
    """Euclidean norm along ``axis``, the squares summed in index order."""
    v = np.moveaxis(_f64(v), axis, -1)
    acc = v[..., 0] * v[..., 0]
    for i in range(1, v.shape[-1]):  # a handful of components, not points
        acc = acc + v[..., i] * v[..., i]
    return np.sqrt(acc)


def matmul(a, b) -> np.ndarray:
    """``a @ b`` with NumPy's broadcasting of stacked matrices, for a small inner dimension
    (3 or 4 here): the products summed term by term in index order, no BLAS."""
    a, b = _f64(a), _f64(b)
    vec_a, vec_b = a.ndim == 1, b.ndim == 1
    if vec_a:
        a = a[None, :]
    if vec_b:
        b = b[:, None]
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align")
    out = a[..., :, 0:1] * b[..., 0:1, :]
    for k in range(1, a.shape[-1]):  # the inner dimension (3 or 4), not the points
        out = out + a[..., :, k:k + 1] * b[..., k:k + 1, :]
    if vec_a:
        out = out[..., 0, :]
    if vec_b:
        out = out[..., 0]
    return out


def apply(points, rotation, translation=None) -> np.ndarray:
    """``points @ rotation.T + translation``: rows (N, 3) through a 3x3 rotation and a shift."""
    out = matmul(points, np.swapaxes(_f64(rotation), -1, -2))
    return out if translation is None else out + _f64(translation)


def rigid_inverse(transform) -> np.ndarray:
    """The inverse of a 4x4 rigid transform [R t; 0 1] (or a stack of them): [R^T, -R^T t]."""
    t = _f64(transform)
    rt = np.swapaxes(t[..., :3, :3], -1, -2)
    out = np.zeros_like(t)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -matmul(rt, t[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def det3(m) -> np.ndarray:
    """Determinant of 3x3 matrices (the top-left block of 4x4 ones), by cofactors in a fixed order."""
    m = _f64(m)
    return (m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
            - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
            + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0]))
