"""Unit tests of the reference schemes of math §6 (``spectral_curv.baselines``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import asarray, to_numpy
from spectral_curv import baselines as bl
from spectral_curv import kron


def _spd(rng: np.random.Generator, n: int, cond: float = 10.0) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = cond ** (-rng.uniform(0.0, 1.0, n))
    return (q * lam) @ q.T


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------------ default scheme


def test_default_fixed_point(xp):
    """``S = (Σ + λI)/γ`` is a fixed point when the batch GOP equals ``Σ`` exactly."""
    rng = np.random.default_rng(0)
    n, lam, gamma = 6, 0.1, 0.5
    sigma = _spd(rng, n)
    root = np.linalg.cholesky(sigma)
    g = np.sqrt(n) * root.T  # rows g_b: mean g_b g_bᵀ = L Lᵀ = Σ
    s = (sigma + lam * np.eye(n)) / gamma
    st = bl.default_update_gop(
        bl.default_init(asarray(xp, s)), asarray(xp, g), beta2=0.3, gamma=gamma, damping=lam
    )
    np.testing.assert_allclose(to_numpy(st.S), s, atol=1e-12)


def test_default_gop_equals_generic(xp):
    rng = np.random.default_rng(1)
    n = 5
    s = _spd(rng, n)
    g = rng.standard_normal(n)
    delta = np.outer(g, g) + 0.2 * np.eye(n) - 0.7 * s
    a = bl.default_update_gop(
        bl.default_init(asarray(xp, s)), asarray(xp, g), beta2=0.05, gamma=0.7, damping=0.2
    )
    b = bl.default_update(bl.default_init(asarray(xp, s)), asarray(xp, delta), beta2=0.05)
    np.testing.assert_allclose(to_numpy(a.S), to_numpy(b.S), atol=1e-13)
    want = (1 - 0.05 * 0.7) * s + 0.05 * (np.outer(g, g) + 0.2 * np.eye(n))
    np.testing.assert_allclose(to_numpy(a.S), want, atol=1e-13)


# ----------------------------------------------------------------- Cholesky scheme


def test_expm_matches_scipy():
    sla = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    for scale in (1e-3, 0.3, 5.0):
        x = scale * rng.standard_normal((7, 7))
        np.testing.assert_allclose(bl.expm(x), sla.expm(x), rtol=1e-12, atol=1e-12)
    low = np.tril(rng.standard_normal((6, 6)))
    e = bl.expm(low)
    assert np.all(np.triu(e, 1) == 0.0)


def test_expm_of_skew_is_orthogonal(xp):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 6))
    e = to_numpy(bl.expm(asarray(xp, a - a.T)))
    np.testing.assert_allclose(e.T @ e, np.eye(6), atol=1e-12)


def test_cholesky_roundtrip_and_triangular(xp):
    rng = np.random.default_rng(4)
    s = _spd(rng, 6)
    st = bl.cholesky_from_dense(asarray(xp, s))
    np.testing.assert_allclose(to_numpy(bl.cholesky_dense(st)), s, rtol=1e-10, atol=1e-12)
    for exp in ("first_order", "exact"):
        new = bl.cholesky_update_gop(st, asarray(xp, rng.standard_normal(6)), beta2=0.1, exp=exp)
        k = to_numpy(new.K)
        assert np.all(np.triu(k, 1) == 0.0)


@pytest.mark.parametrize("exp", ["first_order", "exact"])
def test_cholesky_matches_default_to_second_order(xp, exp):
    """One step from the same S: ``‖S_chol − S_default‖ = O(β₂²)`` — halving β₂ quarters it."""
    rng = np.random.default_rng(5)
    n = 8
    s = _spd(rng, n)
    g = rng.standard_normal((3, n))
    errs = []
    for beta2 in (1e-2, 5e-3, 2.5e-3):
        ch = bl.cholesky_update_gop(
            bl.cholesky_from_dense(asarray(xp, s)),
            asarray(xp, g),
            beta2=beta2,
            gamma=1.0,
            damping=0.1,
            exp=exp,
        )
        de = bl.default_update_gop(
            bl.default_init(asarray(xp, s)), asarray(xp, g), beta2=beta2, gamma=1.0, damping=0.1
        )
        errs.append(np.linalg.norm(to_numpy(bl.cholesky_dense(ch)) - to_numpy(de.S)))
    for e0, e1 in itertools.pairwise(errs):
        assert 3.5 < e0 / e1 < 4.5, errs


def test_cholesky_gop_equals_generic(xp):
    rng = np.random.default_rng(6)
    n = 5
    s = _spd(rng, n)
    g = rng.standard_normal(n)
    delta = np.outer(g, g) + 0.3 * np.eye(n) - s
    st = bl.cholesky_from_dense(asarray(xp, s))
    for exp in ("first_order", "exact"):
        a = bl.cholesky_update_gop(st, asarray(xp, g), beta2=0.05, damping=0.3, exp=exp)
        b = bl.cholesky_update(st, asarray(xp, delta), beta2=0.05, exp=exp)
        np.testing.assert_allclose(to_numpy(a.K), to_numpy(b.K), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------- Van Loan–Pitsianis


def test_rearrange_is_isometry_and_maps_kron_to_rank_one(xp):
    rng = np.random.default_rng(7)
    a, c = rng.standard_normal((3, 3)), rng.standard_normal((4, 4))
    r = to_numpy(bl.rearrange(asarray(xp, np.kron(a, c)), 3, 4))
    np.testing.assert_allclose(r, np.outer(a.reshape(-1), c.reshape(-1)), atol=1e-14)
    m = rng.standard_normal((12, 12))
    assert np.isclose(
        np.linalg.norm(to_numpy(bl.rearrange(asarray(xp, m), 3, 4))), np.linalg.norm(m)
    )


def test_vlp_recovers_exact_kron(xp):
    rng = np.random.default_rng(8)
    a, c = _spd(rng, 3), _spd(rng, 5)
    fa, fc = bl.nearest_kron(asarray(xp, np.kron(a, c)), 3, 5)
    fa, fc = to_numpy(fa), to_numpy(fc)
    np.testing.assert_allclose(np.kron(fa, fc), np.kron(a, c), atol=1e-12)
    assert np.isclose(np.linalg.norm(fa), np.linalg.norm(fc))
    # SPD input: SPD (symmetric, positive) factors.
    np.testing.assert_allclose(fa, fa.T, atol=1e-12)
    assert np.linalg.eigvalsh(fa).min() > 0 and np.linalg.eigvalsh(fc).min() > 0


def test_vlp_is_frobenius_optimal():
    """No random perturbation of the VLP factors gets closer to ``M`` (Frobenius)."""
    rng = np.random.default_rng(9)
    m = _spd(rng, 12, cond=100.0) + 0.3 * np.kron(_spd(rng, 3), _spd(rng, 4))
    fa, fc = bl.nearest_kron(m, 3, 4)
    best = np.linalg.norm(np.kron(fa, fc) - m)
    # Stationarity: the residual is orthogonal to the tangent space {dA⊗C + A⊗dC}.
    res = bl.rearrange(np.kron(fa, fc) - m, 3, 4)
    np.testing.assert_allclose(res @ fc.reshape(-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(res.T @ fa.reshape(-1), 0.0, atol=1e-12)
    for eps in (1e-1, 1e-2, 1e-3):
        for _ in range(50):
            pa = fa + eps * rng.standard_normal(fa.shape)
            pc = fc + eps * rng.standard_normal(fc.shape)
            assert np.linalg.norm(np.kron(pa, pc) - m) > best


def test_projection_update_is_vlp_of_the_dense_update(xp):
    rng = np.random.default_rng(10)
    r, c, beta2, lam = 3, 4, 0.05, 0.01
    a, cc = _spd(rng, r), _spd(rng, c)
    gs = rng.standard_normal((2, r, c))
    dense = (1 - beta2) * np.kron(a, cc) + beta2 * (
        np.mean([np.outer(g.reshape(-1), g.reshape(-1)) for g in gs], axis=0) + lam * np.eye(r * c)
    )
    wa, wc = bl.nearest_kron(dense, r, c)
    st = bl.projection_from_factors(asarray(xp, a), asarray(xp, cc))
    for method in ("power", "svd"):
        new = bl.projection_update_gop(st, asarray(xp, gs), beta2=beta2, damping=lam, method=method)
        got = np.kron(to_numpy(new.A), to_numpy(new.C))
        np.testing.assert_allclose(got, np.kron(wa, wc), rtol=1e-10, atol=1e-12)
    one = bl.projection_update_gop(st, asarray(xp, gs[0]), beta2=beta2)
    two = bl.projection_update_gop(st, asarray(xp, gs[:1]), beta2=beta2)
    np.testing.assert_allclose(to_numpy(one.A), to_numpy(two.A), atol=1e-13)


# -------------------------------------------------------- KL-nearest Kronecker product


def _kl_objective(s: np.ndarray, sigma: np.ndarray) -> float:
    return float(np.trace(np.linalg.solve(s, sigma)) + np.linalg.slogdet(s)[1])


def test_kl_nearest_kron(xp):
    rng = np.random.default_rng(11)
    r, c = 3, 4
    a, cc = _spd(rng, r), _spd(rng, c)
    fa, fc = bl.kl_nearest_kron(asarray(xp, np.kron(a, cc)), r, c)
    np.testing.assert_allclose(np.kron(to_numpy(fa), to_numpy(fc)), np.kron(a, cc), rtol=1e-9)
    sigma = 0.7 * np.kron(a, cc) / np.trace(np.kron(a, cc)) + 0.3 * _spd(rng, r * c, 100.0) / 12
    fa, fc = (to_numpy(x) for x in bl.kl_nearest_kron(asarray(xp, sigma), r, c))
    s_kl = np.kron(fa, fc)
    va, vc = bl.nearest_kron(sigma, r, c)
    assert _kl_objective(s_kl, sigma) < _kl_objective(np.kron(va, vc), sigma)
    for _ in range(20):  # a local minimum of the KL objective over A ⊗ C
        pa = fa + 1e-3 * rng.standard_normal((r, r))
        pc = fc + 1e-3 * rng.standard_normal((c, c))
        pa, pc = 0.5 * (pa + pa.T), 0.5 * (pc + pc.T)
        assert _kl_objective(np.kron(pa, pc), sigma) > _kl_objective(s_kl, sigma)


def _exact_batch(sigma: np.ndarray, r: int, c: int) -> np.ndarray:
    """Gradients ``G_b`` (b = rc) whose mean GOP is exactly ``Σ``."""
    root = np.linalg.cholesky(sigma)
    return (np.sqrt(r * c) * root.T).reshape(r * c, r, c)


def test_kl_fixed_point_is_stationary_for_kron_schemes(xp):
    """Both Kronecker schemes with γ = 1 stand still at ``kl_nearest_kron(Σ)`` (math §4)."""
    rng = np.random.default_rng(12)
    r, c = 3, 4
    sigma = 0.6 * np.kron(_spd(rng, r), _spd(rng, c)) / 12 + 0.4 * _spd(rng, r * c, 100.0) / 12
    fa, fc = bl.kl_nearest_kron(sigma, r, c)
    gs = asarray(xp, _exact_batch(sigma, r, c))
    ch = bl.kron_cholesky_from_factors(asarray(xp, fa), asarray(xp, fc))
    new = bl.kron_cholesky_update_gop(ch, gs, beta2=0.1)
    np.testing.assert_allclose(
        to_numpy(bl.kron_cholesky_dense(new)), np.kron(fa, fc), rtol=1e-9, atol=1e-12
    )
    sp = kron.from_factors(asarray(xp, fa), asarray(xp, fc))
    new_sp = kron.update_gop(sp, gs, beta2=0.1)
    np.testing.assert_allclose(to_numpy(kron.dense(new_sp)), np.kron(fa, fc), rtol=1e-9, atol=1e-12)


def test_kron_cholesky_logdet_moves_like_default(xp):
    """First order: ``Δ log det S = β₂ tr(S⁻¹Δ)``, as for the default scheme (scale split)."""
    rng = np.random.default_rng(13)
    r, c = 3, 4
    a, cc = _spd(rng, r), _spd(rng, c)
    g = rng.standard_normal((r, c))
    s = np.kron(a, cc)
    want_rate = np.trace(np.linalg.solve(s, np.outer(g.reshape(-1), g.reshape(-1)) - s))
    st = bl.kron_cholesky_from_factors(asarray(xp, a), asarray(xp, cc))
    errs = []
    for beta2 in (1e-3, 5e-4):
        new = to_numpy(
            bl.kron_cholesky_dense(bl.kron_cholesky_update_gop(st, asarray(xp, g), beta2=beta2))
        )
        got = np.linalg.slogdet(new)[1] - np.linalg.slogdet(s)[1]
        errs.append(abs(got - beta2 * want_rate))
    assert errs[0] / errs[1] > 3.5


def test_input_validation():
    with pytest.raises(ValueError):
        bl.nearest_kron(np.eye(6), 2, 2)
    with pytest.raises(ValueError):
        bl.cholesky_update_gop(bl.CholeskyState(np.eye(3)), np.ones(3), beta2=0.1, exp="nope")
    with pytest.raises(ValueError):
        bl.projection_update_gop(
            bl.projection_from_factors(np.eye(2), np.eye(3)), np.ones((3, 2)), beta2=0.1
        )
    with pytest.raises(ValueError):
        bl.default_update_gop(bl.default_init(np.eye(3)), np.ones(4), beta2=0.1)


def test_every_spec6_reference_method_lives_here():
    """math §6's baselines in one module (issue 14 §3): the SPD and NES ones moved here; the
    former names in ``spd`` / ``nes`` are aliases of the same objects."""
    from spectral_curv import maps, nes, spd

    for name in ("rgd_step", "cholesky_step", "XNES", "CholeskyNES", "nearest_kron"):
        assert name in bl.__all__ and getattr(bl, name).__module__ == bl.__name__, name
    # expm is a core map now (the geodesic spectral step uses it, math §2.5); old name kept.
    assert bl.expm is maps.expm and "expm" not in bl.__all__
    assert spd.rgd_step is bl.rgd_step and spd.cholesky_step is bl.cholesky_step
    assert nes.XNES is bl.XNES and nes.CholeskyNES is bl.CholeskyNES
