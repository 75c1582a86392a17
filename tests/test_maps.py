"""Tests of ``spectral_curv.maps`` (math §1, §2, §5).

References are computed independently in float64 numpy: explicit inverses
(``numpy.linalg.inv``), eigenvalues of the skew argument, explicit loops for
``Skew(Tril(U))``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import asarray, to_numpy
from spectral_curv import full, maps

# These tests check the paper's formulas (math §2/§4) against explicit references: the
# core runs with the paper's basis update (the damped default: tests/test_tie_damping.py).
pytestmark = pytest.mark.usefixtures("paper_rule")


def rand_skew(
    rng: np.random.Generator, n: int, fro: float, batch: tuple[int, ...] = ()
) -> np.ndarray:
    """Random skew matrix (or batch of them), each with Frobenius norm ``fro``."""
    a = rng.standard_normal((*batch, n, n))
    x = a - np.swapaxes(a, -1, -2)
    return x * (fro / np.linalg.norm(x, axis=(-2, -1), keepdims=True))


def cayley_ref(x: np.ndarray) -> np.ndarray:
    """``(I + X)(I − X)⁻¹`` with an explicit inverse."""
    i = np.eye(x.shape[-1])
    return (i + x) @ np.linalg.inv(i - x)


def skew_eigs(x: np.ndarray) -> np.ndarray:
    """The θ of the eigenvalues ``iθ`` of a real skew matrix (numpy eigvals)."""
    lam = np.linalg.eigvals(x)
    assert np.max(np.abs(lam.real)) <= 1e-13 * max(1.0, np.linalg.norm(x, 2))
    return lam.imag


def orth_err(c: np.ndarray) -> float:
    return float(np.linalg.norm(c.T @ c - np.eye(c.shape[-1]), 2))


# --------------------------------------------------------------------------- Cayley, exact


@pytest.mark.parametrize("fro", [0.3, 1.7, 25.0])
def test_cayley_exact_orthogonal_and_equals_inverse_form(xp, jit, fro):
    rng = np.random.default_rng(1)
    x = rand_skew(rng, 7, fro)
    c = to_numpy(jit(lambda a: maps.cayley(a, mode="exact"))(asarray(xp, x)))
    assert c.dtype == np.float64
    assert orth_err(c) <= 1e-13
    np.testing.assert_allclose(c, cayley_ref(x), rtol=0, atol=1e-13)


def test_cayley_exact_batched(xp, jit):
    rng = np.random.default_rng(2)
    x = rand_skew(rng, 5, 1.1, batch=(3,))
    c = to_numpy(jit(lambda a: maps.cayley(a, mode="exact"))(asarray(xp, x)))
    assert c.shape == (3, 5, 5)
    for k in range(3):
        np.testing.assert_allclose(c[k], cayley_ref(x[k]), rtol=0, atol=1e-13)
        assert orth_err(c[k]) <= 1e-13


@pytest.mark.parametrize("fro", [1.0, 1e2, 1e4, 1e6])
def test_claim9_i_minus_x_invertible_for_any_skew(fro):
    """Claim 9: the eigenvalues of I − X are 1 − iθ, so σ_min(I − X) ≥ 1 however large X."""
    rng = np.random.default_rng(3)
    x = rand_skew(rng, 8, fro)
    sv = np.linalg.svd(np.eye(8) - x, compute_uv=False)
    assert sv.min() >= 1.0 - 1e-12
    # and exactly sqrt(1 + θ²) (I − X is normal)
    theta = skew_eigs(x)
    np.testing.assert_allclose(np.sort(sv), np.sort(np.sqrt(1 + theta**2)), rtol=1e-10)


@pytest.mark.parametrize("fro", [1e3, 1e6])
def test_cayley_exact_orthogonal_for_large_argument(xp, jit, fro):
    """The solve behind the exact map has condition ≤ sqrt(1 + ‖X‖₂²): round-off ~ ‖X‖·eps."""
    rng = np.random.default_rng(4)
    x = rand_skew(rng, 6, fro)
    c = to_numpy(jit(lambda a: maps.cayley(a, mode="exact"))(asarray(xp, x)))
    assert orth_err(c) <= 100 * fro * np.finfo(np.float64).eps
    np.testing.assert_allclose(c, cayley_ref(x), rtol=0, atol=100 * fro * 2.3e-16)


# --------------------------------------------------------------------------- Cayley, Neumann


@pytest.mark.parametrize("fro", [0.7, 0.25])
@pytest.mark.parametrize("terms", [0, 1, 2, 3])
def test_neumann_singular_values_match_theory(xp, jit, terms, fro, record_property):
    """``P = (I+X)² Π_{k=1..K}(I+X^{2^k}) = Cayley(X)(I − X^{2^{K+1}})``.

    For the eigenvalue iθ of X the product's eigenvalue has modulus
    ``|1 − (iθ)^{2^{K+1}}|`` (= 1 − θ^{2^{K+1}} for K ≥ 1, 1 + θ² for K = 0); P is normal,
    so these are its singular values, and max |σ − 1| = ‖X‖₂^{2^{K+1}}.
    """
    rng = np.random.default_rng(10 + terms)
    x = rand_skew(rng, 8, fro)
    p = to_numpy(jit(lambda a: maps.cayley(a, mode="neumann", terms=terms))(asarray(xp, x)))
    sv = np.linalg.svd(p, compute_uv=False)
    theta = skew_eigs(x)
    m = 2 ** (terms + 1)
    moduli = np.abs(1 - (1j * theta) ** m)
    np.testing.assert_allclose(np.sort(sv), np.sort(moduli), rtol=0, atol=1e-10)
    x2 = np.linalg.norm(x, 2)
    assert abs(np.max(np.abs(sv - 1)) - x2**m) <= 1e-10
    record_property("orth_err_PtP_minus_I", orth_err(p))


def test_neumann_converges_to_exact():
    """``P_K − Cayley(X) = −Cayley(X) X^{2^{K+1}}`` so ``‖P_K − C‖₂ = ‖X‖₂^{2^{K+1}}`` → 0."""
    rng = np.random.default_rng(5)
    x = rand_skew(rng, 8, 0.7)
    c = cayley_ref(x)
    x2 = np.linalg.norm(x, 2)
    errs = []
    for terms in range(6):
        p = maps.cayley(x, mode="neumann", terms=terms)
        err = np.linalg.norm(p - c, 2)
        np.testing.assert_allclose(err, x2 ** (2 ** (terms + 1)), rtol=1e-8, atol=1e-15)
        errs.append(err)
    assert all(b < a for a, b in itertools.pairwise(errs))
    assert errs[-1] < 1e-14


@pytest.mark.parametrize("fro", [0.7, 0.25])
def test_quadratic_is_orthogonal_to_fourth_order(xp, jit, fro, record_property):
    """``Q = I + 2X + 2X²`` has ``QᵀQ = I + 4X⁴`` exactly, so its singular values are
    ``√(1 + 4θ⁴)`` for the eigenvalues ``iθ`` of ``X``; and ``Q − Cayley(X) = O(X³)``
    (halving ‖X‖ cuts it 8×)."""
    rng = np.random.default_rng(21)
    x = rand_skew(rng, 8, fro)
    q = to_numpy(jit(lambda a: maps.cayley(a, mode="quadratic"))(asarray(xp, x)))
    np.testing.assert_allclose(q, np.eye(8) + 2 * x + 2 * x @ x, rtol=0, atol=1e-14)
    x4 = np.linalg.matrix_power(x, 4)
    np.testing.assert_allclose(q.T @ q, np.eye(8) + 4 * x4, rtol=0, atol=1e-13)
    sv = np.sort(np.linalg.svd(q, compute_uv=False))
    theta = skew_eigs(x)
    np.testing.assert_allclose(sv, np.sort(np.sqrt(1 + 4 * theta**4)), rtol=0, atol=1e-12)
    # third-order agreement with the Cayley map
    errs = [
        np.linalg.norm(maps.cayley(s * x, mode="quadratic") - cayley_ref(s * x), 2)
        for s in (0.1, 0.05)
    ]
    assert 7.5 < errs[0] / errs[1] < 8.5
    record_property("orth_err_QtQ_minus_I", orth_err(q))


def test_quadratic_beats_neumann_k0_and_matches_k1_order():
    """At two matmuls (as Neumann K = 0, whose error is ‖X‖²) the quadratic's orthogonality
    error is 4‖X‖⁴, the order of Neumann K = 1 (‖X‖⁴, three matmuls)."""
    rng = np.random.default_rng(22)
    x = rand_skew(rng, 10, 0.25)
    x2 = np.linalg.norm(x, 2)
    e_q = np.linalg.norm(
        maps.cayley(x, mode="quadratic").T @ maps.cayley(x, mode="quadratic") - np.eye(10), 2
    )
    np.testing.assert_allclose(e_q, 4 * x2**4, rtol=1e-8)
    pk0 = maps.cayley(x, mode="neumann", terms=0)
    e0 = np.linalg.norm(pk0.T @ pk0 - np.eye(10), 2)
    assert e_q < 0.25 * e0


@pytest.mark.parametrize("fro", [0.7, 0.25])
def test_quartic_is_orthogonal_to_eighth_order(xp, jit, fro):
    """``Q = (I + a₁X + cX²)(I + a₂X + cX²)`` has ``QᵀQ = I + c⁴X⁸`` exactly (singular values
    ``√(1 + c⁴θ⁸)``), ``c = 2 − √2``; ``Q − Cayley(X) = O(X³)``; at the step guard
    ``‖X‖₂ = 0.25`` it is ~10⁴× more orthogonal than the quadratic map."""
    rng = np.random.default_rng(23)
    x = rand_skew(rng, 8, fro)
    q = to_numpy(jit(lambda a: maps.cayley(a, mode="quartic"))(asarray(xp, x)))
    i, r2 = np.eye(8), np.sqrt(2.0)
    c = 2 - r2
    ref = (i + c * x + c * x @ x) @ (i + r2 * x + c * x @ x)
    np.testing.assert_allclose(q, ref, rtol=0, atol=1e-13)
    np.testing.assert_allclose(q.T @ q, i + c**4 * np.linalg.matrix_power(x, 8), rtol=0, atol=1e-13)
    sv = np.sort(np.linalg.svd(q, compute_uv=False))
    theta = skew_eigs(x)
    np.testing.assert_allclose(sv, np.sort(np.sqrt(1 + c**4 * theta**8)), rtol=0, atol=1e-12)
    errs = [
        np.linalg.norm(maps.cayley(s * x, mode="quartic") - cayley_ref(s * x), 2)
        for s in (0.1, 0.05)
    ]
    assert 7.5 < errs[0] / errs[1] < 8.5  # second-order agreement, as the quadratic map
    g = rand_skew(rng, 10, 1.0)
    g = 0.25 * g / np.linalg.norm(g, 2)
    e4 = orth_err(maps.cayley(g, mode="quartic"))
    e2 = orth_err(maps.cayley(g, mode="quadratic"))
    assert e4 <= c**4 * 0.25**8 * (1 + 1e-6) and e4 < 2e-4 * e2


@pytest.mark.parametrize("mode", ["exact", "neumann", "quadratic", "quartic"])
def test_cayley_apply_is_b_times_cayley(xp, jit, mode):
    rng = np.random.default_rng(6)
    x = rand_skew(rng, 6, 0.4)
    b = rng.standard_normal((6, 6))
    f = jit(lambda b_, x_: maps.cayley_apply(b_, x_, mode=mode, terms=2))
    got = to_numpy(f(asarray(xp, b), asarray(xp, x)))
    i = np.eye(6)
    ref = (
        b @ cayley_ref(x)
        if mode == "exact"
        else b @ (i + 2 * x + 2 * x @ x)
        if mode == "quadratic"
        else b @ (i + (2 - 2**0.5) * (x + x @ x)) @ (i + 2**0.5 * x + (2 - 2**0.5) * x @ x)
        if mode == "quartic"
        else b @ ((i + x) @ (i + x) @ (i + x @ x) @ (i + x @ x @ x @ x))
    )
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-13)


# --------------------------------------------------------------------------- rotation generator


def generator_ref(w: np.ndarray, d: np.ndarray, scale: float, tol: float) -> np.ndarray:
    """``scale·(L − Lᵀ)``, ``L_ij = −W_ij/(d_i − d_j)`` for i > j, 0 on relative ties."""
    n = len(d)
    lo = np.zeros((n, n))
    for i in range(n):
        for j in range(i):
            if abs(d[i] - d[j]) > tol * max(abs(d[i]), abs(d[j])):
                lo[i, j] = -w[i, j] / (d[i] - d[j])
    return scale * (lo - lo.T)


def test_rotation_generator_explicit_loop_and_exactly_skew(xp, jit):
    rng = np.random.default_rng(7)
    n = 6
    w = rng.standard_normal((n, n))  # deliberately not symmetric: only Tril is read
    d = np.exp(rng.standard_normal(n))
    f = jit(lambda w_, d_: maps.rotation_generator(w_, d_, 0.3))
    x = to_numpy(f(asarray(xp, w), asarray(xp, d)))
    assert np.array_equal(x + x.T, np.zeros((n, n)))  # bitwise skew
    tol = np.finfo(np.float64).eps ** 0.5
    np.testing.assert_allclose(x, generator_ref(w, d, 0.3, tol), rtol=1e-14, atol=0)
    # the upper triangle and the diagonal of W are never read
    w2 = w + np.triu(rng.standard_normal((n, n)))
    x2 = to_numpy(f(asarray(xp, w2), asarray(xp, d)))
    assert np.array_equal(x, x2)


def test_rotation_generator_masks_ties(xp, jit):
    tol = 1e-6
    d = np.array([1.0, 1.0 + 0.5e-6, 2.0, 2.0 * (1 + 3e-6), 5.0])
    rng = np.random.default_rng(8)
    w = rng.standard_normal((5, 5))
    f = jit(lambda w_, d_: maps.rotation_generator(w_, d_, 1.0, tie_tol=tol))
    x = to_numpy(f(asarray(xp, w), asarray(xp, d)))
    assert x[1, 0] == 0.0 and x[0, 1] == 0.0  # relative gap 0.5e-6 ≤ tol: masked
    assert x[3, 2] != 0.0  # relative gap ~3e-6 > tol: kept
    np.testing.assert_allclose(x, generator_ref(w, d, 1.0, tol), rtol=1e-12, atol=0)


def test_rotation_generator_tie_boundary_is_inclusive(xp, jit):
    """``|d_i − d_j| ≤ tol·max(|d_i|, |d_j|)`` masks: d = (1, 2) with tol = 0.5 is a tie."""
    d = asarray(xp, [1.0, 2.0])
    w = asarray(xp, [[0.0, 0.0], [3.0, 0.0]])
    x_tie = to_numpy(jit(lambda a, b: maps.rotation_generator(a, b, 1.0, tie_tol=0.5))(w, d))
    x_gap = to_numpy(jit(lambda a, b: maps.rotation_generator(a, b, 1.0, tie_tol=0.49))(w, d))
    assert np.array_equal(x_tie, np.zeros((2, 2)))
    np.testing.assert_allclose(x_gap, [[0.0, 3.0], [-3.0, 0.0]], rtol=1e-15)


def test_rotation_generator_isotropic_d_gives_zero(xp, jit):
    rng = np.random.default_rng(9)
    w = asarray(xp, rng.standard_normal((5, 5)))
    d = asarray(xp, np.full(5, 0.37))
    for msn in (None, 0.1):
        f = jit(lambda a, b, msn=msn: maps.rotation_generator(a, b, 2.0, max_step_norm=msn))
        assert np.array_equal(to_numpy(f(w, d)), np.zeros((5, 5)))


def test_rotation_generator_max_step_norm_caps(xp, jit):
    rng = np.random.default_rng(11)
    n = 6
    w = rng.standard_normal((n, n))
    d = np.linspace(1.0, 1.5, n)  # small gaps: a large generator
    uncapped = to_numpy(
        jit(lambda a, b: maps.rotation_generator(a, b, 0.5))(asarray(xp, w), asarray(xp, d))
    )
    big = np.linalg.norm(uncapped)
    assert big > 1.0
    f = jit(lambda w_, d_: maps.rotation_generator(w_, d_, 0.5, max_step_norm=0.25))
    capped = to_numpy(f(asarray(xp, w), asarray(xp, d)))
    np.testing.assert_allclose(np.linalg.norm(capped), 0.25, rtol=1e-14)
    np.testing.assert_allclose(capped, uncapped * (0.25 / big), rtol=1e-13, atol=1e-16)
    assert np.array_equal(capped + capped.T, np.zeros((n, n)))


def test_rotation_generator_max_step_norm_only_shrinks(xp, jit):
    rng = np.random.default_rng(12)
    w = asarray(xp, rng.standard_normal((5, 5)))
    d = asarray(xp, [1.0, 2.0, 3.0, 4.0, 5.0])
    small = to_numpy(jit(lambda a, b: maps.rotation_generator(a, b, 1e-3))(w, d))
    assert np.linalg.norm(small) < 0.25
    f = jit(lambda a, b: maps.rotation_generator(a, b, 1e-3, max_step_norm=0.25))
    same = to_numpy(f(w, d))
    assert np.array_equal(small, same)  # bitwise unchanged


def test_rotation_generator_batched_caps_each_member(xp, jit):
    rng = np.random.default_rng(13)
    w = rng.standard_normal((3, 4, 4))
    d = np.stack([np.linspace(1, 1.1, 4), np.linspace(1, 40, 4), np.linspace(1, 2, 4)])
    wx, dx = asarray(xp, w), asarray(xp, d)
    x = to_numpy(jit(lambda a, b: maps.rotation_generator(a, b, 0.01, max_step_norm=0.2))(wx, dx))
    tol = np.finfo(np.float64).eps ** 0.5
    for k in range(3):
        ref = generator_ref(w[k], d[k], 0.01, tol)
        ref = ref * min(1.0, 0.2 / np.linalg.norm(ref))
        np.testing.assert_allclose(x[k], ref, rtol=1e-13, atol=1e-17)
    norms = np.linalg.norm(x, axis=(-2, -1))
    assert norms[0] == pytest.approx(0.2, rel=1e-14)  # capped
    assert norms[1] < 0.2  # untouched


# --------------------------------------------------------------------------- Skew convention


def _spd(rng: np.random.Generator, n: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.linspace(0.5, 3.0, n)) @ q.T


def test_skew_convention_first_order_sec5(record_property):
    """math §5: ``Skew(M) = M − Mᵀ`` with the argument ``(β₂/2)Skew(Tril(U))`` reproduces
    ``S + β₂Δ`` to first order; the ``(M − Mᵀ)/2`` convention moves the off-diagonal
    (eigenbasis) entries by only half of ``β₂ Q`` — off by a factor 2.
    """
    rng = np.random.default_rng(14)
    n = 5
    s0 = _spd(rng, n)
    a = rng.standard_normal((n, n))
    delta = a + a.T  # symmetric, indefinite
    st = full.from_dense(s0)
    b0, d0 = st.B, st.d
    q = b0.T @ delta @ b0
    off = ~np.eye(n, dtype=bool)

    def coeffs(beta2: float) -> tuple[np.ndarray, np.ndarray, float, float]:
        # default convention, through the public update
        s1 = full.dense(full.update(st, delta, beta2=beta2))
        # the halved convention: X = (β₂/2)·(L − Lᵀ)/2, built from the same primitives
        x_half = maps.rotation_generator(q, d0, beta2 / 2.0) / 2.0
        d1 = maps.exp_scale(d0, beta2 * np.diag(q))
        b1 = maps.cayley_apply(b0, x_half)
        s1h = (b1 * d1) @ b1.T
        target = s0 + beta2 * delta
        c = (b0.T @ (s1 - s0) @ b0)[off] / (beta2 * q[off])
        ch = (b0.T @ (s1h - s0) @ b0)[off] / (beta2 * q[off])
        return c, ch, np.linalg.norm(s1 - target), np.linalg.norm(s1h - target)

    c, ch, e, eh = coeffs(1e-4)
    np.testing.assert_allclose(c, 1.0, atol=2e-3)  # first-order coefficient 1
    np.testing.assert_allclose(ch, 0.5, atol=2e-3)  # halved convention: coefficient 1/2
    _, _, e2, eh2 = coeffs(5e-5)
    record_property("err_ratio_default", float(e / e2))
    record_property("err_ratio_halved", float(eh / eh2))
    assert 3.5 <= e / e2 <= 4.5  # O(β₂²)
    assert 1.8 <= eh / eh2 <= 2.2  # O(β₂): wrong at first order


# --------------------------------------------------------------------------- exp map


def test_exp_scale_modes(xp, jit):
    d = np.array([0.5, 1.0, 2.0, 1e-3])
    rate = np.array([0.1, -0.7, 3.0, -0.5])
    dx, rx = asarray(xp, d), asarray(xp, rate)
    ex = to_numpy(jit(lambda a, b: maps.exp_scale(a, b, mode="exact"))(dx, rx))
    fo = to_numpy(jit(lambda a, b: maps.exp_scale(a, b, mode="first_order"))(dx, rx))
    np.testing.assert_allclose(ex, d * np.exp(rate / d), rtol=1e-15)
    assert np.all(ex > 0)  # even for rate ≪ −d
    np.testing.assert_allclose(fo, d + rate, rtol=1e-15)
    assert fo[3] < 0  # the truncated map does not protect positivity
    # first-order agreement: exact − truncated = O(rate²)
    small = 1e-3 * d * np.sign(rate)  # |rate/d| = 1e-3 for every entry
    f = jit(lambda a, b: maps.exp_scale(a, b, mode="exact"))
    e1 = to_numpy(f(dx, asarray(xp, small))) - (d + small)
    e2 = to_numpy(f(dx, asarray(xp, small / 2))) - (d + small / 2)
    np.testing.assert_allclose(e1 / e2, 4.0, rtol=1e-3)


def test_skew_helper_has_no_half(xp):
    m = asarray(xp, [[1.0, 2.0], [5.0, 7.0]])
    np.testing.assert_array_equal(to_numpy(maps.skew(m)), [[0.0, -3.0], [3.0, 0.0]])
