"""Layer-batched Kronecker states and diagonal sides (``spectral_curv.kron``, math §4).

A state whose leading axes ``L = alpha.shape`` stack independent layers must behave
exactly like ``L`` independent single-layer states (every function: ``update_gop``,
``precondition``, ``precondition_and_update``, ``logdet``, ``factors``); a leading sample
axis ``(b, *L, r, c)`` averages the GOP per layer. A side with ``B = None`` is diagonal:
``B = I`` fixed, no rotation, only ``diag(W)`` enters its ``d`` update.

The per-layer references are the core's own unbatched calls (the unbatched core is tested
against dense formulas in ``test_kron.py``); the sample-average and diagonal-side
references are explicit float64 numpy formulas written here (explicit ``S⁻¹``, ``W``,
``Skew(Tril(U))`` by loops, Cayley through ``inv``, the Neumann product by matrix powers),
never outputs of ``spectral_curv``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from conftest import asarray, to_numpy
from spectral_curv import kron

# These tests check the paper's formulas (math §2/§4) against explicit references: the
# core runs with the paper's basis update (the damped default: tests/test_tie_damping.py).
pytestmark = pytest.mark.usefixtures("paper_rule")

L, R, C = 3, 5, 4
TOL = 1e-12

# (exp, cayley, cayley_terms, max_step_norm): the exact maps, the matmul-only defaults of
# the optimizer, and a deeper Neumann product with a tight cap (active for some layers only).
MODES = [
    ("exact", "exact", 1, None),
    ("first_order", "neumann", 1, None),
    ("exact", "neumann", 2, 0.3),
    ("first_order", "quadratic", 1, None),
]
MODE_IDS = ["exact", "first_order-neumann", "exact-neumann2-cap", "first_order-quadratic"]
HYPER = {"beta2": 0.1, "gamma": 1.0, "damping": 1e-3}


# ----------------------------------------------------------------------------- helpers
def _orth(rng: np.random.Generator, n: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return q


def _logspread(rng: np.random.Generator, n: int, width: float) -> np.ndarray:
    """``d`` with well-separated entries and ``Σ log d = 0``."""
    ld = np.linspace(-width, width, n) + 0.05 * rng.standard_normal(n)
    rng.shuffle(ld)
    return np.exp(ld - ld.mean())


def _layer(
    rng: np.random.Generator, r: int = R, c: int = C, diag_c: bool = False, diag_k: bool = False
) -> tuple[Any, ...]:
    """One random normalised single-layer state as numpy arrays (None for a diagonal side)."""
    return (
        np.float64(np.exp(rng.uniform(-1.0, 1.0))),
        None if diag_c else _orth(rng, r),
        _logspread(rng, r, 1.0),
        None if diag_k else _orth(rng, c),
        _logspread(rng, c, 0.8),
    )


def _stack(layers: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    return tuple(None if f[0] is None else np.stack(f) for f in zip(*layers))


def _to_xp(xp: Any, st: tuple[Any, ...]) -> kron.KronState:
    return kron.KronState(*(None if f is None else asarray(xp, f) for f in st))


def _index(st: kron.KronState, i: Any) -> kron.KronState:
    key = (*i, ...) if isinstance(i, tuple) else (i, ...)  # array-API: explicit ellipsis
    return kron.KronState(*(None if f is None else f[key] for f in st))


def _close(actual: Any, expected: Any, tol: float = TOL, what: str = "") -> None:
    a = to_numpy(actual) if not isinstance(actual, np.ndarray) else actual
    e = np.asarray(to_numpy(expected) if not isinstance(expected, np.ndarray) else expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    err = float(np.max(np.abs(a - e), initial=0.0)) / max(1.0, float(np.max(np.abs(e))))
    assert err <= tol, f"{what}: error {err:.3e} > {tol:.1e}"


def _close_state(actual: kron.KronState, expected: Any, tol: float = TOL) -> None:
    # the Kronecker fields (V, the corrected eigenvalues, is None here: tests/test_eigenvalues.py)
    assert actual.V is None
    for name, a, e in zip(kron.KronState._fields[:5], actual[:5], expected[:5], strict=True):
        assert (a is None) == (e is None), f"{name}: None-ness differs"
        if a is not None:
            _close(a, e, tol, name)


# Module-level functions with the hyperparameters as (traced) arguments, modes closed over:
# under jax.jit each is traced once per mode and shape for the whole session.
_CACHE: dict[tuple, Callable[..., Any]] = {}


def _update_fn(exp: str, cayley: str, terms: int, msn: float | None) -> Callable[..., Any]:
    key = ("update", exp, cayley, terms, msn)
    if key not in _CACHE:

        def fn(s, g, beta2, gamma, damping):
            return kron.update_gop(
                s,
                g,
                beta2=beta2,
                gamma=gamma,
                damping=damping,
                exp=exp,
                cayley=cayley,
                cayley_terms=terms,
                max_step_norm=msn,
            )

        _CACHE[key] = fn
    return _CACHE[key]


def _pu_fn(exp: str, cayley: str, terms: int, msn: float | None) -> Callable[..., Any]:
    key = ("pu", exp, cayley, terms, msn)
    if key not in _CACHE:

        def fn(s, g, p, beta2, gamma, damping):
            return kron.precondition_and_update(
                s,
                g,
                p=p,
                beta2=beta2,
                gamma=gamma,
                damping=damping,
                exp=exp,
                cayley=cayley,
                cayley_terms=terms,
                max_step_norm=msn,
            )

        _CACHE[key] = fn
    return _CACHE[key]


def _precondition(s, g, p):
    return kron.precondition(s, g, p=p)


def _logdet(s):
    return kron.logdet(s)


def _factors(s, power):
    return kron.factors(s, power)


def _grads(rng: np.random.Generator, lead: tuple[int, ...]) -> np.ndarray:
    """Gradients whose scale differs per layer (0.3 … 3), so per-matrix caps differ."""
    g = rng.standard_normal((*lead, R, C))
    n = int(np.prod(lead[-1:])) if lead else 1
    scales = np.logspace(-0.5, 0.5, max(n, 1)).reshape((1,) * (len(lead) - 1) + (-1, 1, 1))
    return g * scales if lead else g


# ------------------------------------------------------------------ numpy references
def _sym_inv_root(b: np.ndarray | None, d: np.ndarray, t: float) -> np.ndarray:
    bb = np.eye(d.size) if b is None else b
    return bb @ np.diag(d**t) @ bb.T


def _ref_generator(w: np.ndarray, d: np.ndarray, scale: float, msn: float | None) -> np.ndarray:
    """``scale · Skew(Tril(U))``, ``U_ij = −W_ij/(d_i − d_j)`` (i > j; relative-√eps ties)."""
    n = d.size
    u = np.zeros((n, n))
    tol = np.sqrt(np.finfo(np.float64).eps)
    for i in range(n):
        for j in range(i):
            if abs(d[i] - d[j]) > tol * max(abs(d[i]), abs(d[j])):
                u[i, j] = -w[i, j] / (d[i] - d[j])
    x = scale * (u - u.T)
    if msn is not None:
        x = x * min(1.0, msn / max(np.linalg.norm(x), np.finfo(np.float64).tiny))
    return x


def _ref_cayley(x: np.ndarray, cayley: str, terms: int) -> np.ndarray:
    i = np.eye(x.shape[0])
    if cayley == "exact":
        return (i + x) @ np.linalg.inv(i - x)
    if cayley == "quadratic":
        return i + 2 * x + 2 * x @ x
    out = (i + x) @ (i + x)
    for k in range(1, terms + 1):
        out = out @ (i + np.linalg.matrix_power(x, 2**k))
    return out


def _ref_update(
    st: tuple[Any, ...],
    gs: np.ndarray,
    *,
    beta2: float,
    gamma: float,
    damping: float,
    exp: str,
    cayley: str,
    terms: int,
    msn: float | None,
) -> tuple[Any, ...]:
    """math §4 for one layer from explicit matrices; ``gs`` is ``(r, c)`` or ``(b, r, c)``
    (the GOP is averaged over b). A None side is ``B = I`` fixed: its ``d`` update uses the
    same formula with ``diag(W)`` of the unrotated ``W`` and it is never rotated."""
    a, bc, dc, bk, dk = st[:5]
    r, c = dc.size, dk.size
    gs = gs.reshape(-1, r, c)
    if cayley != "exact" and msn is None:
        msn = 0.25  # the core's documented default cap in neumann mode
    sci = _sym_inv_root(bc, dc, -1.0)
    ski = _sym_inv_root(bk, dk, -1.0)
    bcc = np.eye(r) if bc is None else bc
    bkk = np.eye(c) if bk is None else bk
    wc = np.mean([bcc.T @ g @ ski @ g.T @ bcc for g in gs], axis=0)
    wk = np.mean([bkk.T @ g.T @ sci @ g @ bkk for g in gs], axis=0)
    # λ_l = λ Tr(S_other⁻¹) = λ Σ 1/d_other (the two agree while B is orthogonal; the core
    # uses Σ 1/d, which also holds for the slightly non-orthogonal B of the Neumann map).
    lam_c, lam_k = damping * np.sum(1.0 / dk), damping * np.sum(1.0 / dc)
    kc, kk = c, r
    if exp == "exact":
        mc = (-gamma * dc + (np.diag(wc) + lam_c) / (a * kc)) / dc
        mk = (-gamma * dk + (np.diag(wk) + lam_k) / (a * kk)) / dk
        dc1 = dc * np.exp(beta2 * (mc - mc.mean()))
        dk1 = dk * np.exp(beta2 * (mk - mk.mean()))
        a1 = a * np.exp(beta2 / 2 * (mc.mean() + mk.mean()))
    else:
        nc = (1 - gamma * beta2) * dc + beta2 / (a * kc) * (np.diag(wc) + lam_c)
        nk = (1 - gamma * beta2) * dk + beta2 / (a * kk) * (np.diag(wk) + lam_k)
        dc1 = np.exp(np.log(nc) - np.log(nc).mean())
        dk1 = np.exp(np.log(nk) - np.log(nk).mean())
        a1 = a * np.exp(np.log(nc).mean() / 2 + np.log(nk).mean() / 2)
    bc1 = (
        None
        if bc is None
        else bc @ _ref_cayley(_ref_generator(wc, dc, beta2 / (2 * a * kc), msn), cayley, terms)
    )
    bk1 = (
        None
        if bk is None
        else bk @ _ref_cayley(_ref_generator(wk, dk, beta2 / (2 * a * kk), msn), cayley, terms)
    )
    return np.float64(a1), bc1, dc1, bk1, dk1


def _ref_precondition(st: tuple[Any, ...], g: np.ndarray, p: float) -> np.ndarray:
    a, bc, dc, bk, dk = st[:5]
    return a ** (-1.0 / p) * _sym_inv_root(bc, dc, -1.0 / p) @ g @ _sym_inv_root(bk, dk, -1.0 / p)


# ------------------------------------------------------------- stacked = per layer
@pytest.mark.parametrize(("exp", "cayley", "terms", "msn"), MODES, ids=MODE_IDS)
def test_stacked_update_gop_equals_per_layer(xp, jit, exp, cayley, terms, msn):
    rng = np.random.default_rng(1)
    st = _to_xp(xp, _stack([_layer(rng) for _ in range(L)]))
    fn = jit(_update_fn(exp, cayley, terms, msn))
    singles = [_index(st, i) for i in range(L)]
    for _ in range(3):  # several steps: B moves away from the start, d separates further
        g = _grads(rng, (L,))
        st = fn(st, asarray(xp, g), **HYPER)
        singles = [fn(s, asarray(xp, g[i]), **HYPER) for i, s in enumerate(singles)]
        for i, s in enumerate(singles):
            _close_state(_index(st, i), s)
    assert tuple(st.alpha.shape) == (L,)
    assert tuple(st.B_C.shape) == (L, R, R) and tuple(st.d_K.shape) == (L, C)


def test_cap_regime_differs_per_layer():
    """Premise of the capped mode above: the tight cap binds for some layers and not for
    others, so a cap computed over the whole stack (one norm) would break per-layer equality."""
    rng = np.random.default_rng(1)
    layers = [_layer(rng) for _ in range(L)]
    g = _grads(rng, (L,))
    norms = []
    for st, gi in zip(layers, g):
        a, bc, dc, bk, dk = st[:5]
        wc = bc.T @ gi @ _sym_inv_root(bk, dk, -1.0) @ gi.T @ bc
        norms.append(np.linalg.norm(_ref_generator(wc, dc, HYPER["beta2"] / (2 * a * C), None)))
    assert min(norms) < 0.3 < max(norms), norms


def test_multi_axis_batch_equals_per_layer(xp, jit):
    """``L = (2, 2)``: two leading axes of layers."""
    rng = np.random.default_rng(2)
    layers = [_layer(rng) for _ in range(4)]
    st_np = tuple(None if f is None else f.reshape(2, 2, *f.shape[1:]) for f in _stack(layers))
    st = _to_xp(xp, st_np)
    g = rng.standard_normal((2, 2, R, C))
    fn = jit(_update_fn("first_order", "neumann", 1, None))
    new = fn(st, asarray(xp, g), **HYPER)
    for i in range(2):
        for j in range(2):
            ref = fn(_index(st, (i, j)), asarray(xp, g[i, j]), **HYPER)
            _close_state(_index(new, (i, j)), ref)
    u = to_numpy(jit(_precondition)(new, asarray(xp, g), 1.5))
    ld = to_numpy(jit(_logdet)(new))
    assert tuple(ld.shape) == (2, 2)
    for i in range(2):
        for j in range(2):
            s = _index(new, (i, j))
            _close(u[i, j], jit(_precondition)(s, asarray(xp, g[i, j]), 1.5), what="step")
            _close(ld[i, j], jit(_logdet)(s), what="logdet")


@pytest.mark.parametrize("p", [1.0, 2.0, 3.3])
def test_stacked_precondition_logdet_factors_equal_per_layer(xp, jit, p):
    rng = np.random.default_rng(3)
    st = _to_xp(xp, _stack([_layer(rng) for _ in range(L)]))
    g = _grads(rng, (L,))
    u = to_numpy(jit(_precondition)(st, asarray(xp, g), p))
    ld = to_numpy(jit(_logdet)(st))
    a, sc, sk = (to_numpy(f) for f in jit(_factors)(st, -1.0 / p))
    assert tuple(u.shape) == (L, R, C) and tuple(ld.shape) == (L,)
    assert tuple(sc.shape) == (L, R, R) and tuple(sk.shape) == (L, C, C)
    for i in range(L):
        s = _index(st, i)
        _close(u[i], jit(_precondition)(s, asarray(xp, g[i]), p), what="precondition")
        _close(ld[i], jit(_logdet)(s), what="logdet")
        a1, sc1, sk1 = jit(_factors)(s, -1.0 / p)
        _close(a[i], a1, what="alpha")
        _close(sc[i], sc1, what="S_C")
        _close(sk[i], sk1, what="S_K")
    # sample-batched G against a stacked state: each sample slice preconditioned per layer
    gb = rng.standard_normal((2, L, R, C))
    ub = to_numpy(jit(_precondition)(st, asarray(xp, gb), p))
    for b in range(2):
        for i in range(L):
            one = _index(st, i)[:5]
            ref = _ref_precondition(tuple(to_numpy(f) for f in one), gb[b, i], p)
            _close(ub[b, i], ref, what="sample-batched precondition")


@pytest.mark.parametrize(("exp", "cayley", "terms", "msn"), MODES, ids=MODE_IDS)
def test_stacked_precondition_and_update_equals_per_layer(xp, jit, exp, cayley, terms, msn):
    rng = np.random.default_rng(4)
    st = _to_xp(xp, _stack([_layer(rng) for _ in range(L)]))
    fn = jit(_pu_fn(exp, cayley, terms, msn))
    singles = [_index(st, i) for i in range(L)]
    for _ in range(2):
        g = _grads(rng, (L,))
        st, u = fn(st, asarray(xp, g), 2.0, **HYPER)
        u = to_numpy(u)
        outs = [fn(s, asarray(xp, g[i]), 2.0, **HYPER) for i, s in enumerate(singles)]
        singles = [o[0] for o in outs]
        for i, (s, ui) in enumerate(outs):
            _close_state(_index(st, i), s)
            _close(u[i], ui, what="step")


def test_init_batch_equals_per_layer_init(xp, jit):
    """``init(r, c, batch=(L,))`` is L copies of ``init(r, c)``; from that isotropic start
    (every U masked as a tie) the stacked run equals the per-layer runs for several steps."""
    st = kron.init(R, C, batch=(L,), scale=0.5, xp=xp)
    one = kron.init(R, C, scale=0.5, xp=xp)
    for f, f1 in zip(st[:5], one[:5]):
        _close(f, np.broadcast_to(to_numpy(f1), (L, *f1.shape)), tol=0.0)
    fn = jit(_update_fn("exact", "exact", 1, None))
    singles = [one] * L
    rng = np.random.default_rng(5)
    for _ in range(3):
        g = rng.standard_normal((L, R, C))
        st = fn(st, asarray(xp, g), **HYPER)
        singles = [fn(s, asarray(xp, g[i]), **HYPER) for i, s in enumerate(singles)]
    for i, s in enumerate(singles):
        _close_state(_index(st, i), s)
    assert float(np.max(np.abs(to_numpy(st.B_C) - np.eye(R)))) > 1e-3  # B did move


def test_from_factors_stacks(xp, jit):
    """``from_factors`` of stacked SPD factors = stacking per-layer ``from_factors`` (compared
    through ``factors``: eigenvector signs are not unique)."""
    rng = np.random.default_rng(6)
    sc = np.stack([_sym_inv_root(_orth(rng, R), _logspread(rng, R, 1.0), 1.0) for _ in range(L)])
    sk = np.stack(
        [_sym_inv_root(_orth(rng, C), 2 * _logspread(rng, C, 1.0), 1.0) for _ in range(L)]
    )
    alpha = np.array([0.5, 1.0, 2.0])
    st = jit(kron.from_factors)(asarray(xp, sc), asarray(xp, sk), asarray(xp, alpha))
    a, fc, fk = (to_numpy(f) for f in jit(_factors)(st, 1.0))
    for i in range(L):
        s1 = jit(kron.from_factors)(asarray(xp, sc[i]), asarray(xp, sk[i]), float(alpha[i]))
        a1, fc1, fk1 = jit(_factors)(s1, 1.0)
        _close(a[i], a1, what="alpha")
        _close(fc[i], fc1, what="S_C")
        _close(fk[i], fk1, what="S_K")
        _close(a[i] * np.kron(fc[i], fk[i]), alpha[i] * np.kron(sc[i], sk[i]))


# ------------------------------------------------------------------ sample batch
@pytest.mark.parametrize(("exp", "cayley", "terms", "msn"), MODES, ids=MODE_IDS)
def test_sample_batch_averages_gop_per_layer(xp, jit, exp, cayley, terms, msn):
    rng = np.random.default_rng(7)
    layers = [_layer(rng) for _ in range(L)]
    st = _to_xp(xp, _stack(layers))
    gb = rng.standard_normal((6, L, R, C))
    new = jit(_update_fn(exp, cayley, terms, msn))(st, asarray(xp, gb), **HYPER)
    for i in range(L):
        ref = _ref_update(
            layers[i], gb[:, i], exp=exp, cayley=cayley, terms=terms, msn=msn, **HYPER
        )
        _close_state(_index(new, i), ref)


def test_sample_batch_is_not_the_mean_gradient(xp, jit):
    """Guard: averaging the GOP differs from the GOP of the averaged gradient."""
    rng = np.random.default_rng(8)
    st = _to_xp(xp, _stack([_layer(rng) for _ in range(L)]))
    gb = rng.standard_normal((6, L, R, C))
    fn = jit(_update_fn("exact", "exact", 1, None))
    a = fn(st, asarray(xp, gb), **HYPER)
    b = fn(st, asarray(xp, gb.mean(axis=0)), **HYPER)
    assert np.max(np.abs(to_numpy(a.d_C) - to_numpy(b.d_C))) > 1e-3


# ------------------------------------------------------------------ diagonal sides
SIDES = [(True, False), (False, True), (True, True)]
SIDE_IDS = ["diag_rows", "diag_cols", "both_diag"]


@pytest.mark.parametrize(("diag_c", "diag_k"), SIDES, ids=SIDE_IDS)
@pytest.mark.parametrize(("exp", "cayley", "terms", "msn"), MODES, ids=MODE_IDS)
def test_diag_side_matches_numpy_reference(xp, jit, diag_c, diag_k, exp, cayley, terms, msn):
    """A None side: same d formula with diag(W) of the unrotated W, B never rotated; the
    other side as usual. Stacked, several steps, against the explicit numpy reference."""
    rng = np.random.default_rng(9)
    layers = [_layer(rng, diag_c=diag_c, diag_k=diag_k) for _ in range(L)]
    st = _to_xp(xp, _stack(layers))
    fn = jit(_update_fn(exp, cayley, terms, msn))
    for step in range(3):
        g = _grads(rng, (L,)) if step != 1 else rng.standard_normal((4, L, R, C))
        st = fn(st, asarray(xp, g), **HYPER)
        gl = g if step != 1 else np.moveaxis(g, 1, 0)
        layers = [
            _ref_update(s, gl[i], exp=exp, cayley=cayley, terms=terms, msn=msn, **HYPER)
            for i, s in enumerate(layers)
        ]
        for i in range(L):
            _close_state(_index(st, i), layers[i], tol=1e-11)
    assert (st.B_C is None) == diag_c and (st.B_K is None) == diag_k
    for d in (st.d_C, st.d_K):  # det = 1 kept on a diagonal side too
        _close(np.sum(np.log(to_numpy(d)), axis=-1), np.zeros(L))


@pytest.mark.parametrize("side", ["C", "K"])
def test_diag_side_one_step_equals_full_with_identity(xp, jit, side):
    """From ``B_l = I`` one step of the diagonal side gives the same α, d_C, d_K and other
    factor as the full scheme (only the full scheme then rotates ``B_l``)."""
    rng = np.random.default_rng(10)
    full = list(_stack([_layer(rng) for _ in range(L)]))
    idx = 1 if side == "C" else 3
    full[idx] = np.broadcast_to(np.eye(R if side == "C" else C), full[idx].shape).copy()
    diagonal = list(full)
    diagonal[idx] = None
    g = _grads(rng, (L,))
    fn = jit(_update_fn("exact", "exact", 1, None))
    a = fn(_to_xp(xp, tuple(full)), asarray(xp, g), **HYPER)
    b = fn(_to_xp(xp, tuple(diagonal)), asarray(xp, g), **HYPER)
    for name in ("alpha", "d_C", "d_K", "B_K" if side == "C" else "B_C"):
        _close(getattr(b, name), getattr(a, name), what=name)
    assert getattr(b, "B_" + side) is None
    moved = to_numpy(getattr(a, "B_" + side))
    assert np.max(np.abs(moved - np.eye(moved.shape[-1]))) > 1e-3  # the full side did rotate


@pytest.mark.parametrize(("diag_c", "diag_k"), SIDES, ids=SIDE_IDS)
def test_diag_side_precondition_logdet_factors_dense(xp, jit, diag_c, diag_k):
    rng = np.random.default_rng(11)
    layers = [_layer(rng, diag_c=diag_c, diag_k=diag_k) for _ in range(L)]
    st = _to_xp(xp, _stack(layers))
    g = rng.standard_normal((L, R, C))
    u = to_numpy(jit(_precondition)(st, asarray(xp, g), 2.5))
    ld = to_numpy(jit(_logdet)(st))
    a, sc, sk = (to_numpy(f) for f in jit(_factors)(st, 0.7))
    for i, (al, bc, dc, bk, dk, *_) in enumerate(layers):
        _close(u[i], _ref_precondition(layers[i], g[i], 2.5), what="precondition")
        _close(ld[i], R * C * np.log(al) + C * np.log(dc).sum() + R * np.log(dk).sum())
        _close(a[i], al**0.7, what="alpha")
        _close(sc[i], _sym_inv_root(bc, dc, 0.7), what="S_C")
        _close(sk[i], _sym_inv_root(bk, dk, 0.7), what="S_K")
        s1 = _index(st, i)
        dense = jit(kron.dense)(s1, -0.5)
        ref = al**-0.5 * np.kron(_sym_inv_root(bc, dc, -0.5), _sym_inv_root(bk, dk, -0.5))
        _close(dense, ref, what="dense")
        # dense(S^{-1/p}) vec(G) is the preconditioned step (row-major vec)
        _close(
            to_numpy(kron.dense(s1, -1 / 2.5)) @ g[i].reshape(-1),
            to_numpy(u[i]).reshape(-1),
            what="dense vs precondition",
        )
    with pytest.raises(ValueError, match="unbatched"):
        kron.dense(st)


@pytest.mark.parametrize(("diag_rows", "diag_cols"), SIDES, ids=SIDE_IDS)
def test_init_diag_sides(xp, jit, diag_rows, diag_cols):
    """``init(..., diag_rows/diag_cols)``: None side, d = 1; the run from it equals the numpy
    reference (the isotropic start masks every U on the full side at the first step)."""
    st = kron.init(R, C, batch=(L,), diag_rows=diag_rows, diag_cols=diag_cols, scale=0.3, xp=xp)
    assert (st.B_C is None) == diag_rows and (st.B_K is None) == diag_cols
    assert tuple(st.d_C.shape) == (L, R) and tuple(st.d_K.shape) == (L, C)
    ref = [
        (
            np.float64(0.3),
            None if diag_rows else np.eye(R),
            np.ones(R),
            None if diag_cols else np.eye(C),
            np.ones(C),
        )
    ] * L
    fn = jit(_update_fn("first_order", "neumann", 1, None))
    rng = np.random.default_rng(12)
    for _ in range(3):
        g = rng.standard_normal((L, R, C))
        st = fn(st, asarray(xp, g), **HYPER)
        ref = [
            _ref_update(s, g[i], exp="first_order", cayley="neumann", terms=1, msn=None, **HYPER)
            for i, s in enumerate(ref)
        ]
    for i in range(L):
        _close_state(_index(st, i), ref[i], tol=1e-11)


# ------------------------------------------------------------------ shape errors
@pytest.mark.parametrize(
    "shape",
    [(L + 1, R, C), (R, C), (L, R, C + 1), (L, R + 1, C), (2, L + 1, R, C), (2, 2, L, R, C)],
    ids=["wrong-L", "no-L", "wrong-c", "wrong-r", "sample-wrong-L", "two-sample-axes"],
)
@pytest.mark.parametrize(
    ("diag_c", "diag_k"), [(False, False), (True, False)], ids=["full", "diag"]
)
def test_shape_errors(xp, shape, diag_c, diag_k):
    rng = np.random.default_rng(13)
    st = _to_xp(xp, _stack([_layer(rng, diag_c=diag_c, diag_k=diag_k) for _ in range(L)]))
    g = asarray(xp, np.ones(shape))
    with pytest.raises(ValueError, match="`G` must have shape"):
        kron.update_gop(st, g, beta2=0.1)
    with pytest.raises(ValueError, match="`G` must have shape"):
        kron.precondition(st, g, p=2)
    with pytest.raises(ValueError, match="`G`"):
        kron.precondition_and_update(st, g, p=2, beta2=0.1)


def test_precondition_and_update_rejects_sample_batch(xp):
    st = _to_xp(xp, _stack([_layer(np.random.default_rng(14)) for _ in range(L)]))
    with pytest.raises(ValueError, match="single"):
        kron.precondition_and_update(st, asarray(xp, np.ones((2, L, R, C))), p=2, beta2=0.1)


def test_state_factor_shape_mismatch(xp):
    """A B that does not match the stack is refused (not broadcast)."""
    rng = np.random.default_rng(15)
    st = list(_stack([_layer(rng) for _ in range(L)]))
    st[1] = st[1][:1]  # B_C of one layer for a stack of three
    with pytest.raises(ValueError, match="B_C"):
        kron.update_gop(_to_xp(xp, tuple(st)), asarray(xp, np.ones((L, R, C))), beta2=0.1)
