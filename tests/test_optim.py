"""``spectral_curv.optim``: the functional optimizer step, on every backend (``xp`` fixture),
jitted under jax (``jit`` fixture) where the function is jit-safe.

References come from an independent route: hand-written truth tables (schedule), explicit
float64 NumPy formulas (first step, first-order refresh of the eigenvalues, grafting,
clipping, momentum, the update) and dense matrices (``S^{-1/p}`` via ``eigh`` of the explicit
``α S_C ⊗ S_K``).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import asarray, to_numpy
from spectral_curv import diag, kron, maps, optim

RTOL = 1e-12


def _close(actual, expected, tol: float = RTOL, what: str = "") -> None:
    a = to_numpy(actual).astype(np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, (what, a.shape, e.shape)
    err = float(np.max(np.abs(a - e), initial=0.0)) / max(1.0, float(np.max(np.abs(e), initial=0)))
    assert err <= tol, f"{what}: error {err:.3e} > {tol:.1e}"


def _orth(rng: np.random.Generator, n: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return q


# ------------------------------------------------------------------------- schedule
# update_interval=3, precond_warmup=2, reorth_interval=2, a truncated Cayley, t = 0..9:
# refresh at t = 0 (first), 1 (warmup), 3, 6, 9 (interval); reorth on the 2nd and 4th refresh.
FIRST = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
REFRESH = [1, 1, 0, 1, 0, 0, 1, 0, 0, 1]
REORTH = [0, 1, 0, 0, 0, 0, 1, 0, 0, 0]
REFRESHES_BEFORE = [0, 1, 2, 2, 3, 3, 3, 4, 4, 4]  # the counter each step sees
SCHED = dict(update_interval=3, precond_warmup=2, reorth_interval=2)


def test_schedule_truth_table_python_ints():
    for t in range(10):
        out = optim.schedule(t, REFRESHES_BEFORE[t], **SCHED, cayley="quadratic")
        assert all(type(v) is bool for v in out), out
        assert out == (bool(FIRST[t]), bool(REFRESH[t]), bool(REORTH[t])), t
        # every Cayley mode re-orthonormalises (exact too: round-off accumulates) ...
        exact = optim.schedule(t, REFRESHES_BEFORE[t], **dict(SCHED, cayley="exact"))
        assert exact == (bool(FIRST[t]), bool(REFRESH[t]), bool(REORTH[t]))
        # ... and reorth_interval = 0 never does
        kw = dict(SCHED, reorth_interval=0, cayley="neumann")
        assert optim.schedule(t, REFRESHES_BEFORE[t], **kw) == (
            bool(FIRST[t]),
            bool(REFRESH[t]),
            False,
        )
    # warmup longer than the interval: every step refreshes until t = 5, then t % 4 == 0
    got = [
        optim.schedule(
            t, 0, update_interval=4, precond_warmup=5, reorth_interval=0, cayley="quadratic"
        )[1]
        for t in range(10)
    ]
    assert got == [True] * 5 + [False, False, False, True, False]
    # update_interval = 1: every step
    assert all(
        optim.schedule(
            t, t, update_interval=1, precond_warmup=0, reorth_interval=3, cayley="quadratic"
        )[1]
        for t in range(6)
    )


@pytest.mark.parametrize("cayley", ["quadratic", "exact"])
def test_schedule_integer_arrays(xp, jit, cayley):
    fn = jit(lambda t, r: optim.schedule(t, r, **SCHED, cayley=cayley))
    t = xp.arange(10, dtype=xp.int64)
    r = xp.asarray(np.asarray(REFRESHES_BEFORE), dtype=xp.int64)
    first, refresh, reorth = fn(t, r)
    for v in (first, refresh, reorth):
        assert v.dtype == xp.bool and tuple(v.shape) == (10,)
    assert to_numpy(first).tolist() == [bool(v) for v in FIRST]
    assert to_numpy(refresh).tolist() == [bool(v) for v in REFRESH]
    assert to_numpy(reorth).tolist() == [bool(v) for v in REORTH]  # every Cayley mode
    # a 0-d counter (one parameter's traced step)
    out = fn(xp.asarray(6, dtype=xp.int64), xp.asarray(3, dtype=xp.int64))
    assert [bool(to_numpy(v)) for v in out] == [False, True, True]


# ------------------------------------------------------------------------- first_state
@pytest.mark.parametrize("damping", [0.0, 1e-3])
def test_first_state_kron_per_layer(xp, jit, damping):
    rng = np.random.default_rng(0)
    g = rng.standard_normal((3, 4, 5))
    g[1] = 0.0  # a zero gradient: α₀ = λ, or 1 when λ = 0
    g[2] *= 1e-3
    st = optim.init(optim.plan((4, 5)), (4, 5), batch=(3,), dtype=xp.float64, xp=xp)
    new = jit(lambda s, G: optim.first_state(s, G, damping=damping))(st, asarray(xp, g))
    want = np.mean(g * g, axis=(1, 2)) + damping
    want[1] = damping if damping > 0 else 1.0
    _close(new.alpha, want, what="alpha")
    for f in ("B_C", "d_C", "B_K", "d_K"):
        _close(getattr(new, f), to_numpy(getattr(st, f)), 0.0, what=f)


def test_first_state_diag_fill_rule(xp, jit):
    fn0 = jit(lambda s, g: optim.first_state(s, g, damping=0.0))
    fn1 = jit(lambda s, g: optim.first_state(s, g, damping=0.5))
    st = optim.init(("diag",), (4,), dtype=xp.float64, xp=xp)
    g = asarray(xp, [1.0, 0.0, -2.0, 0.0])
    _close(fn0(st, g).d, [1.0, 2.5, 4.0, 2.5], what="fill = mean of the good entries")
    _close(fn1(st, g).d, [1.5, 0.5, 4.5, 0.5], what="g² + λ")
    _close(fn0(st, asarray(xp, np.zeros(4))).d, np.ones(4), what="all zero → 1")


def test_first_state_overflow_is_clamped(xp, jit):
    """A finite float32 gradient whose square overflows: α₀ is clamped to the dtype's largest
    value (a finite, bounded first step; it used to fall back to 1, i.e. a step ``lr·G``);
    the diagonal entries too, and a zero entry takes the good entries' mean."""
    st = optim.init(optim.plan((2, 3)), (2, 3), dtype=xp.float32, xp=xp)
    dst = optim.init(("diag",), (3,), dtype=xp.float32, xp=xp)
    g = asarray(xp, np.full((2, 3), 1e25), dtype=xp.float32)
    gd = asarray(xp, [1e25, 2.0, 0.0], dtype=xp.float32)
    fn = jit(lambda s, x: optim.first_state(s, x, damping=0.0))
    with np.errstate(over="ignore", invalid="ignore"):
        k, dd = fn(st, g), fn(dst, gd)
    big = float(np.finfo(np.float32).max)
    assert k.alpha.dtype == xp.float32 and float(to_numpy(k.alpha)) == big
    _close(dd.d, [big, 4.0, (big + 4.0) / 2], 1e-6, what="clamped; the 0 entry: the good mean")


# ------------------------------------------------------------------------- refresh
GAMMA, BETA2 = 1.5, 0.5  # γβ₂ = 0.75 < 1 (the core rejects γβ₂ ≥ 1 with exp="first_order")


def _first_order_eigs(alpha, d_c, d_k, g, lam):
    """math §4 first-order eigenvalue/scale update for B = I, from explicit float64 sums."""
    r, c = g.shape
    diag_c = np.array([sum(g[i, j] ** 2 / d_k[j] for j in range(c)) for i in range(r)])
    diag_k = np.array([sum(g[i, j] ** 2 / d_c[i] for i in range(r)) for j in range(c)])
    nc = (1 - GAMMA * BETA2) * d_c + BETA2 / (alpha * c) * (diag_c + lam * np.sum(1 / d_k))
    nk = (1 - GAMMA * BETA2) * d_k + BETA2 / (alpha * r) * (diag_k + lam * np.sum(1 / d_c))
    gc, gk = np.exp(np.mean(np.log(nc))), np.exp(np.mean(np.log(nk)))
    return alpha * np.sqrt(gc * gk), nc / gc, nk / gk


def test_refresh_keeps_last_good_per_layer(xp, jit):
    rng = np.random.default_rng(1)
    r, c, lam = 3, 4, 1e-4
    d_c, d_k = np.array([0.5, 1.0, 2.0]), np.array([2.0, 0.5, 1.0, 1.0])
    alpha = np.array([1e-2, 1.0])
    # layer 1: a gradient whose square overflows float64 gives non-finite factors
    g = np.stack([rng.standard_normal((r, c)), np.full((r, c), 1e200)])
    st0 = kron.KronState(
        asarray(xp, alpha),
        asarray(xp, np.stack([np.eye(r)] * 2)),
        asarray(xp, np.stack([d_c] * 2)),
        asarray(xp, np.stack([np.eye(c)] * 2)),
        asarray(xp, np.stack([d_k] * 2)),
        asarray(xp, np.full((2, r, c), 0.7)),  # corrected eigenvalues: kept per layer too
    )
    fn = jit(
        lambda s, G: optim.refresh(
            s, G, precond_lr=BETA2, gamma=GAMMA, damping=lam, cayley="quadratic", exp="first_order"
        )
    )
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        new, ok = fn(st0, asarray(xp, g))
    assert to_numpy(ok).tolist() == [True, False]
    for f in kron.KronState._fields:  # layer 1: the old factors, bit for bit
        _close(to_numpy(getattr(new, f))[1], to_numpy(getattr(st0, f))[1], 0.0, what=f)
        assert np.all(np.isfinite(to_numpy(getattr(new, f))))
    a, nc, nk = _first_order_eigs(alpha[0], d_c, d_k, g[0], lam)  # layer 0: refreshed
    _close(to_numpy(new.alpha)[0], a, 1e-12, what="alpha")
    _close(to_numpy(new.d_C)[0], nc, 1e-12, what="d_C")
    _close(to_numpy(new.d_K)[0], nk, 1e-12, what="d_K")
    b = to_numpy(new.B_C)[0]
    assert np.max(np.abs(b - np.eye(r))) > 1e-6  # rotated
    # one quadratic step under the spectral guard ‖X‖₂ ≤ ρ: ‖BᵀB − I‖₂ ≤ 4ρ⁴ (docs/math.md)
    rho = maps.DEFAULT_MAX_STEP_NORM
    assert np.max(np.abs(b.T @ b - np.eye(r))) < 1.1 * 4 * rho**4


def test_refresh_diag_keeps_last_good_per_entry(xp, jit):
    """The diagonal scheme is elementwise, so keep-last-good is per entry (it was all or
    nothing, which made torch's concatenated buckets differ from NumPy and optax)."""
    gamma = 1.0  # γβ₂ < 1: a first-order step keeps d > 0; an overflow must be rejected
    fn = jit(
        lambda s, g: optim.refresh(
            s, g, precond_lr=BETA2, gamma=gamma, damping=0.1, exp="first_order"
        )
    )
    st = diag.DiagState(asarray(xp, [1.0, 1.0, 1.0]))
    good = np.array([2.0, 3.0, -2.0])
    new, ok = fn(st, asarray(xp, good))
    assert to_numpy(ok).tolist() == [True, True, True]
    _close(new.d, 1.0 + BETA2 * (good**2 + 0.1 - gamma * 1.0), what="d + β₂(g² + λ − γd)")
    big = 2.0 * float(xp.finfo(st.d.dtype).max) ** 0.5  # middle entry: g² overflows to inf
    with np.errstate(over="ignore"):
        new, ok = fn(st, asarray(xp, [2.0, big, 2.0]))
    assert to_numpy(ok).tolist() == [True, False, True]
    updated = 1.0 + BETA2 * (4.0 + 0.1 - gamma * 1.0)
    _close(new.d, [updated, 1.0, updated], what="the overflowing entry kept, the others updated")


# ------------------------------------------------------------------------- reorthonormalize
def test_reorthonormalize_reduces_drift(xp, jit):
    rng = np.random.default_rng(2)

    def drifted(n):
        e = rng.standard_normal((n, n))
        return np.stack([_orth(rng, n) @ (np.eye(n) + 1e-3 * (e + e.T)) for _ in range(2)])

    b_c, b_k = drifted(4), drifted(3)
    st = kron.KronState(
        asarray(xp, [1.0, 2.0]),
        asarray(xp, b_c),
        asarray(xp, np.ones((2, 4))),
        asarray(xp, b_k),
        asarray(xp, np.ones((2, 3))),
    )
    out = jit(optim.reorthonormalize)(st)

    def drift(b):
        b = to_numpy(b)
        return float(np.max(np.linalg.norm(b.mT @ b - np.eye(b.shape[-1]), axis=(-2, -1))))

    for before, after in ((b_c, out.B_C), (b_k, out.B_K)):
        d0, d1 = drift(before), drift(after)
        assert d0 > 1e-3 and d1 < 1e-2 * d0, (d0, d1)
    _close(out.alpha, [1.0, 2.0], 0.0)
    half = jit(optim.reorthonormalize)(st._replace(B_K=None))
    assert half.B_K is None and drift(half.B_C) < 1e-2 * drift(b_c)
    d = diag.DiagState(asarray(xp, [1.0, 2.0]))
    assert optim.reorthonormalize(d) is d


# ------------------------------------------------------------------------- direction
@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("diag_cols", [False, True])
def test_direction_equals_dense_root(xp, jit, p, diag_cols):
    rng = np.random.default_rng(3)
    r, c = 3, 4
    b_c, d_c = _orth(rng, r), rng.uniform(0.5, 2.0, r)
    b_k, d_k = _orth(rng, c), rng.uniform(0.5, 2.0, c)
    if diag_cols:
        b_k = np.eye(c)
    alpha = 0.7
    g = rng.standard_normal((r, c))
    s = alpha * np.kron((b_c * d_c) @ b_c.T, (b_k * d_k) @ b_k.T)  # row-major vec
    w, v = np.linalg.eigh(s)
    want = ((v * w ** (-1.0 / p)) @ v.T @ g.reshape(-1)).reshape(r, c)
    st = kron.KronState(
        asarray(xp, alpha),
        asarray(xp, b_c),
        asarray(xp, d_c),
        None if diag_cols else asarray(xp, b_k),
        asarray(xp, d_k),
    )
    u = jit(lambda s_, g_: optim.direction(s_, g_, p=p))(st, asarray(xp, g))
    _close(u, want, 1e-10, what="S^{-1/p} G")
    dg = rng.uniform(0.5, 2.0, 5)
    gv = rng.standard_normal(5)
    ud = jit(lambda s_, g_: optim.direction(s_, g_, p=p))(
        diag.DiagState(asarray(xp, dg)), asarray(xp, gv)
    )
    _close(ud, dg ** (-1.0 / p) * gv, what="d^{-1/p} g")


# ------------------------------------------------------------------------- post-processing
def test_graft_adam_matches_formula(xp, jit):
    rng = np.random.default_rng(4)
    u, g, m = (rng.standard_normal((3, 4)) for _ in range(3))
    v = rng.uniform(0.1, 1.0, (3, 4))
    b1, b2, eps, step = 0.8, 0.95, 1e-6, 3
    fn = jit(lambda *a: optim.graft_adam(*a, step=step, betas=(b1, b2), eps=eps))
    out, m1, v1 = fn(*(asarray(xp, x) for x in (u, g, m, v)))
    wm = b1 * m + (1 - b1) * g
    wv = b2 * v + (1 - b2) * g * g
    adam = (wm / (1 - b1**step)) / (np.sqrt(wv / (1 - b2**step)) + eps)
    _close(m1, wm, what="exp_avg")
    _close(v1, wv, what="exp_avg_sq")
    _close(out, u * np.linalg.norm(adam) / np.linalg.norm(u), what="grafted U")
    z, _, _ = fn(*(asarray(xp, x) for x in (np.zeros((3, 4)), g, m, v)))
    assert np.array_equal(to_numpy(z), np.zeros((3, 4)))  # U = 0: no 0/0


def test_clip_rms_matches_formula(xp, jit):
    rng = np.random.default_rng(5)
    u = rng.standard_normal((4, 5))
    rms = np.sqrt(np.mean(u * u))
    fn = jit(lambda x, m: optim.clip_rms(x, m))
    for max_rms in (float(0.5 * rms), float(2.0 * rms)):
        out = to_numpy(fn(asarray(xp, u), max_rms))
        want = u * (max_rms / rms) if rms > max_rms else u
        _close(out, want, what=f"max_rms={max_rms}")
        assert np.sqrt(np.mean(out * out)) <= max_rms * (1 + 1e-12)


def test_momentum_and_apply_update_match_formula(xp, jit):
    rng = np.random.default_rng(6)
    buf, u, w = (rng.standard_normal((2, 3)) for _ in range(3))
    m = jit(lambda b, x: optim.add_momentum(b, x, 0.7))(asarray(xp, buf), asarray(xp, u))
    _close(m, 0.7 * buf + u, what="momentum")
    out = jit(lambda p_, x: optim.apply_update(p_, x, lr=0.05, weight_decay=0.1))(
        asarray(xp, w), asarray(xp, u)
    )
    _close(out, (1 - 0.05 * 0.1) * w - 0.05 * u, what="update")


def test_check_finite_grads(xp):
    a = asarray(xp, [1.0, 2.0])
    assert optim.check_finite_grads(xp, []) is True
    assert optim.check_finite_grads(xp, [a, asarray(xp, np.ones((2, 2)))]) is True
    assert optim.check_finite_grads(xp, [a, asarray(xp, [1.0, np.inf])]) is False
    assert optim.check_finite_grads(xp, [asarray(xp, [np.nan]), a]) is False


# ------------------------------------------------------------------------- dtypes
def _pipeline(g, dtype, xp):
    """Every function of the step on one gradient, in ``dtype``."""
    st = optim.init(optim.plan((3, 4)), (3, 4), dtype=dtype, xp=xp)
    st = optim.first_state(st, g, damping=1e-8)
    st, ok = optim.refresh(st, g, precond_lr=0.1)
    st = optim.reorthonormalize(st)
    u = optim.direction(st, g, p=2)
    dst = optim.first_state(optim.init(("diag",), (3, 4), dtype=dtype, xp=xp), g, damping=1e-8)
    dst, _ = optim.refresh(dst, g, precond_lr=0.1, exp="exact")
    ud = optim.direction(dst, g, p=2)
    z = xp.zeros((3, 4), dtype=dtype)
    gu, m, v = optim.graft_adam(u, g, z, z, step=1, betas=(0.9, 0.999), eps=1e-8)
    out = [
        u,
        ud,
        dst.d,
        gu,
        m,
        v,
        optim.clip_rms(u, 0.1),
        optim.add_momentum(z, u, 0.9),
        optim.apply_update(g, u, lr=0.1, weight_decay=0.01),
    ]
    return ok, list(st), out


def test_float32_in_float32_out(xp, jit):
    rng = np.random.default_rng(7)
    g = rng.standard_normal((3, 4))
    ok, factors, out = jit(lambda x: _pipeline(x, xp.float32, xp))(asarray(xp, g, xp.float32))
    assert bool(to_numpy(ok))
    for x in (*factors, *out):
        assert x is None or x.dtype == xp.float32
    # float32 agrees with the float64 route to float32 round-off
    g32 = to_numpy(asarray(xp, g, xp.float32)).astype(np.float64)
    _, _, out64 = jit(lambda x: _pipeline(x, xp.float64, xp))(asarray(xp, g32))
    for a, e in zip(out, out64):
        assert e.dtype == xp.float64
        _close(a, to_numpy(e), 1e-5)


@pytest.mark.parametrize("interval", [0, 1, 3])
def test_schedule_array_reorth_interval_equals_int(xp, jit, interval):
    """An array ``reorth_interval`` (traced by ``optax.inject_hyperparams``) gives the same
    flags as the Python int; ≤ 0 means never."""
    kw = {"update_interval": 2, "precond_warmup": 3, "cayley": "quadratic"}
    fn = jit(lambda s, r, i: optim.schedule(s, r, reorth_interval=i, **kw))
    for step in range(8):
        for refreshes in range(6):
            ref = optim.schedule(step, refreshes, reorth_interval=interval, **kw)
            got = fn(*(asarray(xp, v, xp.int64) for v in (step, refreshes, interval)))
            assert tuple(bool(g) for g in got) == tuple(bool(r) for r in ref), (step, refreshes)
