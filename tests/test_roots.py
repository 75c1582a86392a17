"""Any matrix root p: ``step_scale="p2"`` and a step that never raises from the refresh.

- ``kron.precondition(..., norm_p=2)`` equals the explicit ``S^{-1/p} G`` (eigendecomposition
  of the dense ``α S_C ⊗ S_K``, float64) rescaled to the norm of the explicit ``S^{-1/2} G``;
  the diagonal scheme likewise; no overflow for tiny ``p``;
- the optimizers' default makes lr mean the same for every ``p`` (the first step's size);
- a singular solve, an exploding basis or a non-finite factor inside a refresh is a rejected
  refresh (kept factors, counted, a :class:`RejectedRefreshWarning` once) in torch and
  NumPy, and a diverging run never raises from ``step()`` (issue "Any matrix root").
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from spectral_curv import diag, kron, maps, optim


def _orth(rng: np.random.Generator, n: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return q


def _state(rng: np.random.Generator, r: int = 4, c: int = 3) -> kron.KronState:
    dc, dk = rng.uniform(0.05, 20.0, r), rng.uniform(0.05, 20.0, c)
    dc, dk = dc / np.exp(np.mean(np.log(dc))), dk / np.exp(np.mean(np.log(dk)))
    return kron.KronState(np.asarray(2.5), _orth(rng, r), dc, _orth(rng, c), dk)


def _explicit(st: kron.KronState, G: np.ndarray, p: float) -> np.ndarray:
    """``S^{-1/p} vec(G)`` with ``S = α S_C ⊗ S_K`` built densely and eigendecomposed."""
    sc = st.B_C @ np.diag(st.d_C) @ st.B_C.T
    sk = st.B_K @ np.diag(st.d_K) @ st.B_K.T
    s = float(st.alpha) * np.kron(sc, sk)
    w, v = np.linalg.eigh(s)
    u = v @ np.diag(w ** (-1.0 / p)) @ v.T @ G.reshape(-1)  # row-major vec: kron(S_C, S_K)
    return u.reshape(G.shape)


@pytest.mark.parametrize("p", [0.5, 1.0, 3.0, 4.0])
def test_norm_matched_direction_equals_explicit_root(p):
    rng = np.random.default_rng(int(p * 10))
    st = _state(rng)
    G = rng.standard_normal((4, 3))
    raw, two = _explicit(st, G, p), _explicit(st, G, 2.0)
    want = raw * (np.linalg.norm(two) / np.linalg.norm(raw))
    got = kron.precondition(st, G, p=p, norm_p=2.0)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(kron.precondition(st, G, p=p), raw, rtol=1e-10, atol=1e-12)


def test_norm_matched_per_stacked_layer_and_diagonal_side():
    rng = np.random.default_rng(3)
    a, b = _state(rng), _state(rng)
    st = optim.stack_precond([a, b])
    G = rng.standard_normal((2, 4, 3))
    got = kron.precondition(st, G, p=1.0, norm_p=2.0)
    for i, s in enumerate((a, b)):
        np.testing.assert_allclose(got[i], kron.precondition(s, G[i], p=1.0, norm_p=2.0))
    half = a._replace(B_K=None)  # a diagonal column side
    u = kron.precondition(half, G[0], p=1.0, norm_p=2.0)
    ref = kron.precondition(half, G[0], p=2.0)
    assert np.isclose(np.linalg.norm(u), np.linalg.norm(ref))


def test_diagonal_scheme_matches_norm_and_is_safe_for_tiny_p():
    d = diag.DiagState(np.array([1e-6, 1.0, 4.0, 1e3]))
    g = np.array([1.0, -2.0, 0.5, 3.0])
    u = diag.precondition(d, g, p=1.0, norm_p=2.0)
    raw = g / d.d
    np.testing.assert_allclose(u, raw * np.linalg.norm(g / np.sqrt(d.d)) / np.linalg.norm(raw))
    with np.errstate(over="ignore"):
        assert not np.all(np.isfinite(diag.precondition(d, g, p=0.01)))  # the raw step overflows
    tiny = diag.precondition(d, g, p=0.01, norm_p=2.0)
    assert np.all(np.isfinite(tiny))
    assert np.isclose(np.linalg.norm(tiny), np.linalg.norm(g / np.sqrt(d.d)))
    assert np.array_equal(diag.precondition(d, np.zeros(4), p=1.0, norm_p=2.0), np.zeros(4))


def test_p2_is_bitwise_the_raw_step():
    rng = np.random.default_rng(5)
    st = _state(rng)
    G = rng.standard_normal((4, 3))
    assert np.array_equal(
        kron.precondition(st, G, p=2.0, norm_p=2.0), kron.precondition(st, G, p=2.0)
    )


@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_lr_means_the_same_for_every_p(p):
    """After a few refreshes on anisotropic gradients, the step's size under the default is
    that of p = 2 (to round-off with exact Cayley, whose B is orthogonal; to the truncated
    map's orthogonality drift with the default), while the raw step's size depends on p."""
    torch = pytest.importorskip("torch")
    from spectral_curv.torch import SpectralKron

    def size(p: float, scale: str, cayley: str = "quadratic") -> float:
        w = torch.nn.Parameter(torch.zeros(6, 5, dtype=torch.float64))
        opt = SpectralKron([w], lr=1.0, momentum=0.0, p=p, step_scale=scale, cayley=cayley)
        gen = torch.Generator().manual_seed(0)
        mix = torch.randn(5, 5, generator=gen, dtype=torch.float64)
        for _ in range(6):
            before = w.detach().clone()
            w.grad = 1e-3 * torch.randn(6, 5, generator=gen, dtype=torch.float64) @ mix
            opt.step()
        return float((w.detach() - before).norm())

    assert size(p, "p2", "exact") == pytest.approx(size(2.0, "p2", "exact"), rel=1e-9)
    assert size(p, "p2") == pytest.approx(size(2.0, "p2"), rel=1e-2)
    if p != 2.0:
        assert size(p, "raw") != pytest.approx(size(2.0, "raw"), rel=0.5)


# ----------------------------------------------------------------- no exception escapes
def _singular(*args, **kwargs):
    raise np.linalg.LinAlgError("Singular matrix")


def test_numpy_singular_solve_is_a_rejected_refresh(monkeypatch):
    from spectral_curv.numpy import SpectralKron

    params = {"w": np.zeros((4, 3))}
    opt = SpectralKron(params, lr=0.1, cayley="exact", exp="exact")
    g = {"w": np.arange(12.0).reshape(4, 3) / 10}
    params = opt.step(params, g)
    st = {k: np.copy(v) for k, v in opt.state["w"].items() if k in ("B_C", "B_K", "d_C")}
    monkeypatch.setattr(maps, "cayley_apply", lambda *a, **k: _singular())
    with pytest.warns(optim.RejectedRefreshWarning):
        params = opt.step(params, g)
    assert opt.rejected["w"] == 1 and np.all(np.isfinite(params["w"]))
    for k, v in st.items():
        assert np.array_equal(opt.state["w"][k], v)  # the last good factors


def test_torch_singular_solve_is_a_rejected_refresh(monkeypatch):
    torch = pytest.importorskip("torch")
    from spectral_curv.torch import SpectralKron

    w = torch.nn.Parameter(torch.zeros(4, 3))
    opt = SpectralKron([w], lr=0.1, cayley="exact")
    w.grad = torch.arange(12.0).reshape(4, 3) / 10
    opt.step()
    b = opt.state[w]["B_C"].clone()

    def singular(*a, **k):
        raise torch.linalg.LinAlgError(
            "linalg.solve: The solver failed because the input matrix is singular."
        )

    monkeypatch.setattr(torch.linalg, "solve", singular)
    with warnings.catch_warnings():
        warnings.simplefilter("error", optim.RejectedRefreshWarning)
        opt.step()  # step 1: refreshed (warm-up); the failure is counted, not raised
    assert int(opt.state[w]["rejected"]) == 1 and torch.equal(opt.state[w]["B_C"], b)
    with pytest.warns(optim.RejectedRefreshWarning) as rec:
        opt.step()  # warned once, at the next step's host sync
    # at the user's line, not inside torch's no_grad/profiling wrappers (found by a fuzz)
    assert [r.filename for r in rec] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error", optim.RejectedRefreshWarning)
        opt.step()  # not again
    assert bool(torch.isfinite(w).all())


@pytest.mark.parametrize("factor", [3.0, -3.0, np.nan])
def test_exploding_basis_is_rejected(factor):
    """|B_ij| = 3 (either sign; no orthogonal matrix has that) or NaN: rejected, per layer."""
    rng = np.random.default_rng(0)
    st = optim.init(optim.plan((4, 3)), (4, 3), batch=(2,))
    G = rng.standard_normal((2, 4, 3))
    st = optim.first_state(st, G, damping=0.0)
    _, ok = optim.refresh(st, G, precond_lr=0.1)
    assert ok.tolist() == [True, True]
    b_c = np.stack([st.B_C[0], factor * st.B_C[1]])  # layer 1 broken, layer 0 sound
    bad = st._replace(B_C=b_c)
    new, ok = optim.refresh(bad, G, precond_lr=0.1, cayley="exact", exp="exact")
    assert ok.tolist() == [True, False]
    np.testing.assert_array_equal(new.B_C[1], bad.B_C[1])  # the last good factors kept


def test_a_bug_is_not_swallowed(monkeypatch):
    """Only numerical failures become rejected refreshes; a TypeError still raises."""
    monkeypatch.setattr(
        optim, "_refresh_fn", lambda *a, **k: (_ for _ in ()).throw(TypeError("bug"))
    )
    st = optim.init(optim.plan((4, 3)), (4, 3), batch=(1,))
    with pytest.raises(TypeError, match="bug"):
        optim.precondition_step(
            [st],
            [np.ones((1, 4, 3))],
            first=True,
            refresh=True,
            reorth=False,
            options=optim.Options(),
        )


@pytest.mark.parametrize("cayley", ["quadratic", "exact"])
@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_diverging_run_never_raises(p, cayley):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from spectral_curv.bench.roots import diverging_run

    res = diverging_run(p, cayley, lr=30.0, steps=25)
    assert res["ok"], res["ended"]
    assert res["params_finite"] or res["ended"].startswith("stopped by nonfinite")


def test_ill_conditioned_exact_solve_is_rejected_not_accepted():
    """The paper's rule in exact mode (no step guard): after a 3,000× jump of the gradient
    scale one Cayley solve is ill-conditioned, and a basis with ‖BᵀB − I‖ ≈ 1.08 was accepted
    (every |B_ij| ≤ 1.25 passed; its own checkpoint was then refused). Found by fuzzing."""
    torch = pytest.importorskip("torch")
    from spectral_curv.torch import SpectralKron

    kw = dict(lr=1e-3, cayley="exact", rotation="paper")
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(35, 5))
    opt = SpectralKron([w], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optim.RejectedRefreshWarning)
        for t in range(4):
            w.grad = torch.randn(35, 5) * (1.0 if t < 3 else 3e3)
            opt.step()
    b = opt.state[w]["B_C"].double()
    assert float((b.T @ b - torch.eye(35, dtype=b.dtype)).abs().max()) < 1e-3
    assert int(opt.state[w]["rejected"]) >= 1
    fresh = SpectralKron([torch.nn.Parameter(w.detach().clone())], **kw)
    fresh.load_state_dict(opt.state_dict())  # its own checkpoint loads
