"""Tests of the full-matrix scheme ``spectral_curv.full`` (math §1, §2; Claims 2, 3, 9).

References: explicit float64 numpy matrices (``S``, ``ggᵀ``, ``(I+X)(I−X)⁻¹`` with
``numpy.linalg.inv``), numpy ``eigh`` / ``slogdet``.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import asarray, backend, to_numpy
from spectral_curv import _array, full

# These tests check the paper's formulas (math §2/§4) against explicit references: the
# core runs with the paper's basis update (the damped default: tests/test_tie_damping.py).
pytestmark = pytest.mark.usefixtures("paper_rule")


def rand_orth(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def rand_state(rng: np.random.Generator, n: int, lo: float = 0.5, hi: float = 3.0):
    """numpy (B, d) with distinct, well-separated eigenvalues."""
    return rand_orth(rng, n), np.linspace(lo, hi, n)


def to_state(xp, b: np.ndarray, d: np.ndarray) -> full.SpectralState:
    return full.SpectralState(asarray(xp, b), asarray(xp, d))


def dense_np(b: np.ndarray, d: np.ndarray) -> np.ndarray:
    return b @ np.diag(d) @ b.T


def ref_step(
    b: np.ndarray, d: np.ndarray, delta: np.ndarray, beta2: float, exp: str = "exact"
) -> tuple[np.ndarray, np.ndarray]:
    """math §2 with explicit matrices, loops and an explicit inverse (exact Cayley)."""
    n = len(d)
    q = b.T @ delta @ b
    dq = np.diag(q)
    d_new = d * np.exp(beta2 * dq / d) if exp == "exact" else d + beta2 * dq
    tol = np.sqrt(np.finfo(np.float64).eps)
    lo = np.zeros((n, n))
    for i in range(n):
        for j in range(i):
            if abs(d[i] - d[j]) > tol * max(d[i], d[j]):
                lo[i, j] = -q[i, j] / (d[i] - d[j])
    x = (beta2 / 2) * (lo - lo.T)
    eye = np.eye(n)
    return b @ (eye + x) @ np.linalg.inv(eye - x), d_new


def np_state(st: full.SpectralState) -> tuple[np.ndarray, np.ndarray]:
    return to_numpy(st.B), to_numpy(st.d)


# Module-level step functions with the varying hyperparameters as (0-d array) arguments:
# under jax, ``jax.jit`` of the same function object reuses its compilation across
# parametrized cases (it re-traces only for new shapes).


def _gop(s, g, beta2, gamma, damping):
    return full.update_gop(s, g, beta2=beta2, gamma=gamma, damping=damping)


def _gop_first_order(s, g, beta2, gamma, damping):
    return full.update_gop(s, g, beta2=beta2, gamma=gamma, damping=damping, exp="first_order")


def _gop_dense(s, g, beta2, gamma):
    return full.dense(full.update_gop(s, g, beta2=beta2, gamma=gamma))


def _update(s, delta, beta2):
    return full.update(s, delta, beta2=beta2)


def _precondition(s, v, p):
    return full.precondition(s, v, p=p)


def _dense(s, power):
    return full.dense(s, power)


# --------------------------------------------------------------------------- generic update


def test_update_indefinite_delta_matches_explicit_reference(xp, jit):
    rng = np.random.default_rng(0)
    n = 6
    b, d = rand_state(rng, n)
    a = rng.standard_normal((n, n))
    delta = a + a.T
    assert np.linalg.eigvalsh(delta).min() < 0 < np.linalg.eigvalsh(delta).max()
    b1, d1 = np_state(jit(_update)(to_state(xp, b, d), asarray(xp, delta), asarray(xp, 0.05)))
    rb, rd = ref_step(b, d, delta, 0.05)
    np.testing.assert_allclose(d1, rd, rtol=1e-13)
    np.testing.assert_allclose(b1, rb, rtol=0, atol=1e-13)
    assert np.linalg.norm(b1.T @ b1 - np.eye(n), 2) <= 1e-13


def _update_rotated(s, q, beta2):
    return full.update_rotated(s, q, beta2=beta2)


@pytest.mark.parametrize("rotation", ["paper", "damped"])
@pytest.mark.parametrize("cayley", ["exact", "neumann", "quadratic", "quartic"])
def test_update_rotated_equals_update(xp, jit, cayley, rotation):
    """``update_rotated(state, BᵀΔB)`` is ``update(state, Δ)`` (issue 14 §2), every option."""
    rng = np.random.default_rng(10)
    n = 6
    b, d = rand_state(rng, n)
    a = rng.standard_normal((n, n))
    delta = a + a.T
    q = b.T @ delta @ b
    q = 0.5 * (q + q.T)
    st = to_state(xp, b, d)
    kw = {"beta2": 0.05, "cayley": cayley, "rotation": rotation}
    b1, d1 = np_state(jit(lambda s, m: full.update_rotated(s, m, **kw))(st, asarray(xp, q)))
    b2, d2 = np_state(jit(lambda s, m: full.update(s, m, **kw))(st, asarray(xp, delta)))
    np.testing.assert_allclose(d1, d2, rtol=1e-13)
    np.testing.assert_allclose(b1, b2, rtol=0, atol=1e-13)
    if cayley == "exact" and rotation == "paper":
        rb, rd = ref_step(b, d, delta, 0.05)
        np.testing.assert_allclose(d1, rd, rtol=1e-13)
        np.testing.assert_allclose(b1, rb, rtol=0, atol=1e-13)
    # diag_q, when given, replaces diag(q); check=False skips the value checks only
    d3 = to_numpy(full.update_rotated(st, asarray(xp, q), beta2=0.05, diag_q=asarray(xp, 0 * d)).d)
    np.testing.assert_allclose(d3, d, rtol=1e-15)


def test_update_rotated_input_validation():
    st = full.init(3)
    q = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match=r"`q` must be symmetric"):
        full.update_rotated(st, q, beta2=0.1)
    with pytest.raises(ValueError, match=r"`q`.*non-finite"):
        full.update_rotated(st, np.full((3, 3), np.nan), beta2=0.1)
    with pytest.raises(ValueError, match=r"`q`"):
        full.update_rotated(st, np.eye(2), beta2=0.1)
    with pytest.raises(ValueError, match=r"`diag_q`"):
        full.update_rotated(st, np.eye(3), beta2=0.1, diag_q=np.ones(2))
    with pytest.raises(ValueError, match=r"`beta2`"):
        full.update_rotated(st, np.eye(3), beta2=0.0, check=False)
    with pytest.raises(TypeError, match=r"`q`"):
        full.update_rotated(st, np.eye(3, dtype=np.int64), beta2=0.1)


def _geodesic_ref(b: np.ndarray, d: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    """``S^{1/2} expm(β₂ S^{-1/2}ΔS^{-1/2}) S^{1/2}`` by float64 ``eigh`` (math §2.5)."""
    r, ri = (b * d**0.5) @ b.T, (b / d**0.5) @ b.T
    w, v = np.linalg.eigh(beta2 * ri @ delta @ ri)
    return r @ ((v * np.exp(w)) @ v.T) @ r


@pytest.mark.parametrize("cayley", ["exact", "quartic"])
def test_update_geodesic_converges_to_the_geodesic(xp, jit, cayley):
    """More sweeps → the dense geodesic step (eigh reference): quadratically once the
    off-diagonal is small against the gaps (β₂ = 0.05), after a linear phase for a large step
    (β₂ = 0.3, damped angles ≤ 0.43 rad); every backend, under jit (the traced ``expm``
    path); ``B`` orthogonal, ``d > 0`` for an indefinite Δ."""
    rng = np.random.default_rng(21)
    n = 7
    b, d = rand_state(rng, n)
    a = rng.standard_normal((n, n))
    delta = a + a.T  # indefinite
    assert np.linalg.eigvalsh(delta).min() < 0 < np.linalg.eigvalsh(delta).max()
    q = b.T @ delta @ b
    q = 0.5 * (q + q.T)
    st = to_state(xp, b, d)
    # quartic: each guarded sweep leaves ≤ c⁴‖X‖₂⁸ ≈ 1.8e-6 of non-orthogonality (math §1.3)
    orth_tol = 1e-13 if cayley == "exact" else 1e-5
    for beta2, sweeps in ((0.05, (1, 2, 3, 5)), (0.3, (1, 2, 5, 10))):
        ref = _geodesic_ref(b, d, delta, beta2)
        errs = []
        for k in sweeps:
            step = jit(
                lambda s, m, k=k, t=beta2: full.update_geodesic(
                    s, m, beta2=t, sweeps=k, cayley=cayley
                )
            )
            b1, d1 = np_state(step(st, asarray(xp, q)))
            errs.append(np.abs(dense_np(b1, d1) - ref).max())
            assert np.all(d1 > 0)
            orth = np.abs(b1.T @ b1 - np.eye(n)).max()
            assert orth < orth_tol, orth
        if cayley != "exact":  # the truncated map's drift sets the floor
            assert errs[-1] < 1e-4 * errs[0], errs
            continue
        assert errs[0] > 1e-3 and errs[-1] < 1e-12, errs
        if beta2 == 0.05:  # quadratic: 1.7e-2, 1.8e-4, 1.0e-7, ~1e-15 measured
            assert errs[1] < 0.03 * errs[0] and errs[2] < 3e-3 * errs[1], errs
        else:  # linear first (0.39, 0.13, 1e-6, then round-off)
            assert errs[1] < 0.5 * errs[0] and errs[2] < 1e-4 * errs[1], errs
    # One sweep is the damped one-step update to first order in β₂ (math §2.5).
    small = [
        np.abs(
            full.dense(full.update_geodesic(full.SpectralState(b, d), q, beta2=t, sweeps=1))
            - full.dense(full.update_rotated(full.SpectralState(b, d), q, beta2=t))
        ).max()
        for t in (1e-3, 5e-4)
    ]
    assert 3.5 < small[0] / small[1] < 4.5, small  # O(β₂²)


def test_update_geodesic_ties_and_large_steps():
    """An exact tie (S = I) and a negative step that ``S + β₂Δ`` would take out of the cone
    (smallest eigenvalue −3): finite, orthogonal, ``d > 0``, and still the geodesic (no pair
    is turned by 1/0)."""
    rng = np.random.default_rng(5)
    n = 6
    a = rng.standard_normal((n, n))
    delta = -8.0 * (a @ a.T) / np.linalg.eigvalsh(a @ a.T).max()
    assert np.linalg.eigvalsh(np.eye(n) + 0.5 * delta).min() < -2.9
    st = full.init(n)
    new = full.update_geodesic(st, delta, beta2=0.5, sweeps=12)
    assert np.all(np.isfinite(new.B)) and np.all(new.d > 0)
    np.testing.assert_allclose(new.B.T @ new.B, np.eye(n), atol=1e-13)
    ref = _geodesic_ref(np.eye(n), np.ones(n), delta, 0.5)
    np.testing.assert_allclose(full.dense(new), ref, rtol=0, atol=1e-12)
    # Two exactly tied eigenvalues, coupled only through the third (second order in exp):
    # the target's eigenvectors in the tied plane are set by that coupling, so the pair
    # turns, by at most the damped bound 1/(2κ) rad per sweep, and the sweeps converge.
    b, d = np.eye(3), np.array([1.0, 1.0, 3.0])
    q = np.array([[0.0, 0.0, 0.2], [0.0, 0.0, 0.1], [0.2, 0.1, 0.0]])
    one = full.update_geodesic(full.SpectralState(b, d), q, beta2=0.1, sweeps=1)
    assert np.all(np.isfinite(one.B))
    assert abs(one.B[0, 1]) <= np.sin(0.5 / np.sqrt(4.0 / 3.0)) + 1e-12
    many = full.update_geodesic(full.SpectralState(b, d), q, beta2=0.1, sweeps=12)
    np.testing.assert_allclose(full.dense(many), _geodesic_ref(b, d, q, 0.1), atol=1e-13)


def test_update_geodesic_input_validation():
    st = full.init(3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"`sweeps`"):
            full.update_geodesic(st, np.eye(3), beta2=0.1, sweeps=bad)
    with pytest.raises(ValueError, match=r"`q` must be symmetric"):
        full.update_geodesic(st, np.triu(np.ones((3, 3))), beta2=0.1)
    with pytest.raises(ValueError, match=r"`q`.*non-finite"):
        full.update_geodesic(st, np.full((3, 3), np.inf), beta2=0.1)
    with pytest.raises(ValueError, match=r"`beta2`"):
        full.update_geodesic(st, np.eye(3), beta2=-1.0)
    with pytest.raises(ValueError, match=r"`q`"):
        full.update_geodesic(st, np.eye(2), beta2=0.1)


@pytest.mark.parametrize(
    ("gamma", "damping", "batch"),
    [(0.0, 0.3, None), (1.0, 0.0, None), (1.0, 0.3, 4), (0.0, 0.0, 4)],
)
def test_update_gop_equals_generic_update(xp, jit, gamma, damping, batch):
    """``update(Δ)`` with ``Δ = ggᵀ + λI − γS`` (explicit, may be indefinite) = ``update_gop``."""
    rng = np.random.default_rng(1)
    n = 5
    b, d = rand_state(rng, n, 1.0, 4.0)
    g = rng.standard_normal((n,) if batch is None else (batch, n))
    ggt = np.outer(g, g) if batch is None else g.T @ g / batch
    delta = ggt + damping * np.eye(n) - gamma * dense_np(b, d)
    if gamma == 1.0:
        assert np.linalg.eigvalsh(delta).min() < 0 < np.linalg.eigvalsh(delta).max()
    st = to_state(xp, b, d)
    hyper = [asarray(xp, v) for v in (0.1, gamma, damping)]
    b1, d1 = np_state(jit(_gop)(st, asarray(xp, g), *hyper))
    b2, d2 = np_state(jit(_update)(st, asarray(xp, delta), hyper[0]))
    np.testing.assert_allclose(d1, d2, rtol=1e-13)
    np.testing.assert_allclose(b1, b2, rtol=0, atol=1e-13)
    rb, rd = ref_step(b, d, delta, 0.1)
    np.testing.assert_allclose(d1, rd, rtol=1e-13)
    np.testing.assert_allclose(b1, rb, rtol=0, atol=1e-13)


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_first_order_exp_mode_gop(xp, jit, gamma):
    """``d ← (1 − γβ₂)d + β₂(diag(BᵀggᵀB) + λ)``; ``B`` moves exactly as in exact mode."""
    rng = np.random.default_rng(2)
    n, beta2, lam = 6, 0.07, 0.01
    b, d = rand_state(rng, n)
    g = rng.standard_normal(n)
    st = to_state(xp, b, d)

    hyper = [asarray(xp, v) for v in (beta2, gamma, lam)]
    b1, d1 = np_state(jit(_gop_first_order)(st, asarray(xp, g), *hyper))
    b_ex, _ = np_state(jit(_gop)(st, asarray(xp, g), *hyper))
    ref = (1 - gamma * beta2) * d + beta2 * (np.diag(b.T @ np.outer(g, g) @ b) + lam)
    np.testing.assert_allclose(d1, ref, rtol=1e-14)
    np.testing.assert_allclose(b1, b_ex, rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- Claim 2


@pytest.mark.parametrize("gamma", [0.0, 1.0])
@pytest.mark.parametrize("batch", [None, 3])
def test_claim2_first_order_agreement_with_default(xp, jit, gamma, batch, record_property):
    """One step from ``S0`` (distinct eigenvalues): ``S1 = (1−γβ₂)S0 + β₂ggᵀ + O(β₂²)``."""
    rng = np.random.default_rng(3)
    n = 6
    b, d = rand_state(rng, n)
    g = rng.standard_normal((n,) if batch is None else (batch, n))
    ggt = np.outer(g, g) if batch is None else g.T @ g / batch
    s0 = dense_np(b, d)
    st = to_state(xp, b, d)

    def err(beta2: float) -> float:
        s1 = to_numpy(jit(_gop_dense)(st, asarray(xp, g), asarray(xp, beta2), asarray(xp, gamma)))
        return float(np.linalg.norm(s1 - ((1 - gamma * beta2) * s0 + beta2 * ggt)))

    e1, e2 = err(1e-3), err(5e-4)
    ratio = e1 / e2
    record_property("claim2_ratio", float(ratio))
    print(f"Claim 2 [{backend(xp)}, gamma={gamma}, batch={batch}]: ratio {ratio:.4f}")
    # the O(β₂²) remainder is small against the first-order change β₂‖ggᵀ − γS0‖
    assert e1 <= 0.05 * 1e-3 * np.linalg.norm(ggt - gamma * s0)
    assert 3.5 <= ratio <= 4.5


# --------------------------------------------------------------------------- Claims 3 / 9


def _gop_stream(n: int, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    sigma = a @ a.T / n + 0.1 * np.eye(n)
    return rng.standard_normal((steps, n)) @ np.linalg.cholesky(sigma).T


@pytest.mark.slow
def test_claim3_exact_cayley_stays_orthogonal_10k_steps(record_property):
    n, steps = 8, 10_000
    gs = _gop_stream(n, steps, 4)
    st = full.init(n)
    dmin = np.inf
    for k in range(steps):
        st = full.update_gop(st, gs[k], beta2=0.05, cayley="exact")
        dmin = min(dmin, float(st.d.min()))
    drift = float(np.linalg.norm(st.B.T @ st.B - np.eye(n), 2))
    record_property("exact_orth_drift_10k", drift)
    print(f"exact Cayley: ‖BᵀB − I‖₂ after {steps} steps = {drift:.3g}, min d = {dmin:.3g}")
    assert drift <= 1e-12
    assert dmin > 0
    assert np.all(np.isfinite(st.d))


@pytest.mark.slow
def test_neumann_drift_10k_steps_bounded_by_cap(record_property):
    """K = 1, ‖X‖_F ≤ c = 0.25: each step multiplies ``B`` by ``P = Cayley(X)(I − X⁴)``, whose
    singular values are ``1 − θ⁴`` over the eigenvalues ±iθ of X. These come in pairs, so
    ``θ_max² ≤ ‖X‖_F²/2`` and per step ``σ(B_t⁻¹B_{t+1}) ∈ [1 − c⁴/4, 1] ⊂ [1 − c⁴, 1]``
    (the brief's per-step cap 0.25⁴, sharpened by the factor 4). After N steps
    ``σ(B_N) ∈ [(1 − c⁴/4)^N, 1]``, i.e. ``‖B_NᵀB_N − I‖₂ ≤ 1 − (1 − c⁴/4)^{2N}``, which for
    N = 10⁴ is ≈ 1: the cap alone does not keep B near-orthogonal over long runs (K = 1
    only ever shrinks B). The drift itself is recorded.
    """
    n, steps, cap = 8, 10_000, 0.25
    delta = cap**4 / 4
    gs = _gop_stream(n, steps, 4)
    st = full.init(n)
    worst_lo, worst_hi = 1.0, 1.0
    for k in range(steps):
        new = full.update_gop(
            st, gs[k], beta2=0.05, cayley="neumann", cayley_terms=1, max_step_norm=cap
        )
        sv = np.linalg.svd(np.linalg.solve(st.B, new.B), compute_uv=False)
        worst_lo, worst_hi = min(worst_lo, sv.min()), max(worst_hi, sv.max())
        assert new.d.min() > 0
        st = new
    drift = float(np.linalg.norm(st.B.T @ st.B - np.eye(n), 2))
    bound = 1 - (1 - delta) ** (2 * steps)
    record_property("neumann_K1_drift_10k", drift)
    record_property("neumann_K1_worst_step_sv", (float(worst_lo), float(worst_hi)))
    print(
        f"Neumann K=1, cap {cap}: ‖BᵀB − I‖₂ after {steps} steps = {drift:.4g} "
        f"(bound {bound:.4g}); "
        f"per-step σ in [{worst_lo:.6f}, {worst_hi:.15f}], theory [{1 - delta:.6f}, 1]"
    )
    assert worst_lo >= 1 - delta - 1e-12
    assert worst_hi <= 1 + 1e-12
    assert np.linalg.svd(st.B, compute_uv=False).max() <= 1 + 1e-10
    assert drift <= bound


def test_default_step_cap_per_mode():
    """Default ``max_step_norm``: 0.25 in neumann mode (keeps the series convergent), none
    in exact mode (math §5). Close eigenvalues make the uncapped generator large."""
    rng = np.random.default_rng(11)
    n = 5
    b, _ = rand_state(rng, n)
    st = full.SpectralState(b, np.linspace(1.0, 1.01, n))
    g = rng.standard_normal(n)

    def step(**kw):
        return full.update_gop(st, g, beta2=0.1, **kw).B

    assert np.array_equal(step(cayley="neumann"), step(cayley="neumann", max_step_norm=0.25))
    assert not np.allclose(step(cayley="neumann"), step(cayley="neumann", max_step_norm=0.5))
    assert np.array_equal(step(cayley="exact"), step(cayley="exact", max_step_norm=1e300))
    assert not np.allclose(step(cayley="exact"), step(cayley="exact", max_step_norm=0.25))


# --------------------------------------------------------------------------- read-outs


@pytest.mark.parametrize("p", [1, 2, 4, 3.7])
@pytest.mark.parametrize("vshape", [(), (3,), (2, 3)])
def test_precondition_matches_eigh(xp, jit, p, vshape):
    rng = np.random.default_rng(5)
    n = 5
    b, d = rand_state(rng, n)
    v = rng.standard_normal((*vshape, n))
    w, u = np.linalg.eigh(dense_np(b, d))
    ref = v @ (u @ np.diag(w ** (-1.0 / p)) @ u.T).T
    out = jit(_precondition)(to_state(xp, b, d), asarray(xp, v), asarray(xp, p))
    assert tuple(out.shape) == v.shape
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("power", [1.0, 2, -1.0, -0.5, 0.3])
def test_dense_power_matches_eigh(xp, jit, power):
    rng = np.random.default_rng(6)
    b, d = rand_state(rng, 5)
    w, u = np.linalg.eigh(dense_np(b, d))
    ref = u @ np.diag(w**power) @ u.T
    out = to_numpy(jit(_dense)(to_state(xp, b, d), asarray(xp, power)))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_logdet_matches_slogdet(xp, jit):
    rng = np.random.default_rng(7)
    b, d = rand_state(rng, 6, 0.01, 50.0)
    sign, ref = np.linalg.slogdet(dense_np(b, d))
    assert sign == 1
    out = float(to_numpy(jit(full.logdet)(to_state(xp, b, d))))
    assert out == pytest.approx(ref, rel=1e-13, abs=1e-13)


def test_from_dense_roundtrip(xp, jit):
    rng = np.random.default_rng(8)
    b, d = rand_state(rng, 6)
    s = dense_np(b, d)
    st = jit(full.from_dense)(asarray(xp, s))
    b1, d1 = np_state(st)
    np.testing.assert_allclose(np.sort(d1), np.linalg.eigvalsh(s), rtol=1e-13)
    assert np.linalg.norm(b1.T @ b1 - np.eye(6), 2) <= 1e-13
    np.testing.assert_allclose(to_numpy(jit(full.dense)(st)), s, rtol=0, atol=1e-13)


@pytest.mark.skip_backends("jax", reason="value checks are skipped for lazy (jit) arrays")
def test_from_dense_rejects_non_symmetric(xp):
    """A non-symmetric matrix used to be read from one triangle by ``eigh`` (issue 15)."""
    s = np.array([[2.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match=r"`s` must be symmetric"):
        full.from_dense(asarray(xp, s))
    with pytest.raises(ValueError, match=r"`s`.*non-finite"):
        full.from_dense(asarray(xp, np.full((2, 2), np.inf)))


def test_from_dense_symmetry_tolerance_is_dtype_relative():
    """Round-off asymmetry of the matrix's own dtype passes; the same absolute asymmetry in
    float64 does not."""
    rng = np.random.default_rng(11)
    b, d = rand_state(rng, 5)
    s = dense_np(b, d)
    s32 = ((b * d).astype(np.float32) @ b.T.astype(np.float32)) * np.float32(1e3)
    assert np.abs(s32 - s32.T).max() > 0  # float32 round-off asymmetry
    st = full.from_dense(s32)
    assert st.d.dtype == np.float32
    bumped = s.copy()
    bumped[0, 1] += 1e-7 * np.abs(s).max()  # ~1e-7 relative: float32 round-off, not float64
    full.from_dense(bumped.astype(np.float32))
    with pytest.raises(ValueError, match="symmetric"):
        full.from_dense(bumped)
    full.from_dense(s + 1e-15 * (s - s.T + np.triu(np.ones((5, 5)))))  # float64 round-off: ok


@pytest.mark.parametrize(("gamma", "beta2"), [(1.0, 1.0), (1.0, 2.0), (2.0, 0.5), (4.0, 0.9)])
def test_first_order_gop_needs_gamma_beta2_below_one(gamma, beta2):
    """``exp="first_order"`` with ``γβ₂ ≥ 1`` gave ``d = (1 − γβ₂)d + β₂g² ≤ 0`` (d = −1 from
    ``d = 1, g = 0, γβ₂ = 2``) and NaN after (issue 15): a ValueError naming both."""
    st = full.init(3)
    g = np.array([0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=r"`gamma` \* `beta2` must be < 1"):
        full.update_gop(st, g, beta2=beta2, gamma=gamma, exp="first_order")
    # the exact map keeps d > 0 for any γβ₂, and γβ₂ < 1 is fine in first order
    assert np.all(full.update_gop(st, g, beta2=beta2, gamma=gamma).d > 0)
    st1 = full.update_gop(st, g, beta2=0.99 / gamma, gamma=gamma, exp="first_order")
    assert np.all(st1.d > 0)
    assert np.all(full.update_gop(st, g, beta2=5.0, gamma=0.0, exp="first_order").d > 0)


def test_init_is_scaled_identity(xp):
    st = full.init(4, scale=2.5, xp=xp)
    np.testing.assert_array_equal(to_numpy(full.dense(st)), 2.5 * np.eye(4))
    assert st.d.dtype == xp.float64


# --------------------------------------------------------------------------- dtype / device


def _device_for(xp):
    """A non-default device where the backend has one (array-api-strict, CUDA torch)."""
    if backend(xp) == "array_api_strict":
        return xp.Device("device1")
    if backend(xp) == "torch":
        import torch

        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return None


@pytest.mark.parametrize("cayley", ["exact", "neumann"])
def test_dtype_and_device_preserved_float32(xp, jit, cayley):
    dev = _device_for(xp)
    n = 4
    st = full.init(n, scale=0.5, dtype=xp.float32, device=dev, xp=xp)
    rng = np.random.default_rng(9)
    g = xp.asarray(rng.standard_normal((3, n)), dtype=xp.float32, device=dev)
    a = rng.standard_normal((n, n))
    delta = xp.asarray(a + a.T, dtype=xp.float32, device=dev)
    st = jit(lambda s, g_: full.update_gop(s, g_, beta2=0.1, cayley=cayley))(st, g)
    st = jit(lambda s, dl: full.update(s, dl, beta2=0.01, cayley=cayley))(st, delta)
    outs = {
        "B": st.B,
        "d": st.d,
        "precondition": jit(lambda s, v: full.precondition(s, v, p=3.7))(st, g),
        "dense": jit(lambda s: full.dense(s, -0.5))(st),
        "logdet": jit(full.logdet)(st),
        "from_dense": jit(full.from_dense)(jit(full.dense)(st)).B,
    }
    for name, out in outs.items():
        assert out.dtype == xp.float32, name
        if dev is not None:
            assert _array.device(out) == dev, name
        assert np.all(np.isfinite(to_numpy(out))), name
    b = to_numpy(st.B).astype(np.float64)
    # exact: float32 round-off; neumann (K=1, cap 0.25): two steps, each σ ∈ [1 − 0.25⁴, 1]
    tol = 1e-5 if cayley == "exact" else 1 - (1 - 0.25**4) ** 4 + 1e-5
    assert np.linalg.norm(b.T @ b - np.eye(n), 2) <= tol
