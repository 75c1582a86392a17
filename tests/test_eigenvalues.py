"""Corrected eigenvalues (``eigenvalues="corrected"``, math §4.10): the per-entry second
moment ``V`` of the rotated gradient, refreshed with the factors and used by the step.

References are float64 NumPy written out here from the formulas (not through ``kron``):
``R = B_Cᵀ G B_K`` in the basis before the refresh, ``V ← (1 − γβ₂) V + β₂ (R² + λ)``,
step ``B_C (R ⊙ V^{-1/p}) B_Kᵀ`` (the optimizers': ``B`` and ``R`` of before the refresh,
the refreshed ``V``).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import asarray, to_numpy, xp_assert_close
from spectral_curv import kron, optim


def _orth(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _state(rng: np.random.Generator, r: int, c: int, *, diag_cols: bool = False):
    d_c, d_k = rng.uniform(0.3, 3.0, r), rng.uniform(0.3, 3.0, c)
    d_c, d_k = d_c / np.exp(np.mean(np.log(d_c))), d_k / np.exp(np.mean(np.log(d_k)))
    v = rng.uniform(0.05, 4.0, (r, c))
    return kron.KronState(
        np.float64(1.7), _orth(rng, r), d_c, None if diag_cols else _orth(rng, c), d_k, v
    )


def _on(xp, st: kron.KronState) -> kron.KronState:
    return kron.KronState(*(None if f is None else asarray(xp, f) for f in st))


@pytest.mark.parametrize("diag_cols", [False, True])
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
def test_step_and_moment_equal_the_formulas(xp, p, diag_cols):
    rng = np.random.default_rng(0)
    st, G = _state(rng, 5, 4, diag_cols=diag_cols), rng.standard_normal((5, 4))
    beta2, gamma, lam = 0.2, 0.7, 1e-3
    b_k = np.eye(4) if st.B_K is None else st.B_K
    R = st.B_C.T @ G @ b_k
    want_v = (1 - gamma * beta2) * st.V + beta2 * (R * R + lam)
    want_u = st.B_C @ (R * st.V ** (-1 / p)) @ b_k.T

    sx, Gx = _on(xp, st), asarray(xp, G)
    new = kron.update_gop(
        sx, Gx, beta2=beta2, gamma=gamma, damping=lam, cayley="quadratic", exp="first_order"
    )
    xp_assert_close(new.V, asarray(xp, want_v), rtol=1e-12)
    xp_assert_close(kron.precondition(sx, Gx, p=p), asarray(xp, want_u), rtol=1e-12)
    # the fused refresh + step (lagged order, math §4.10): the same V; the step in the old
    # basis with the refreshed V, Adam's order
    fused, u = kron.precondition_and_update(
        sx, Gx, p=p, beta2=beta2, gamma=gamma, damping=lam, cayley="quadratic", exp="first_order"
    )
    xp_assert_close(fused.V, new.V, rtol=1e-12)
    want_lagged = st.B_C @ (R * want_v ** (-1 / p)) @ b_k.T
    xp_assert_close(u, asarray(xp, want_lagged), rtol=1e-12)


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_engine_steps_in_the_basis_before_the_refresh_with_the_refreshed_v(xp, p):
    """math §4.10's lagged order: ``optim.refresh_and_direction`` keeps ``optim.refresh``'s
    state and steps with ``B_C (R ⊙ V_new^{-1/p}) B_Kᵀ``, ``R`` and ``B`` from before the
    refresh (written out here), not with the refreshed basis."""
    rng = np.random.default_rng(7)
    st, G = _state(rng, 5, 4), rng.standard_normal((5, 4))
    kw = dict(precond_lr=0.3, gamma=1.0, damping=1e-3, cayley="quadratic")
    R = st.B_C.T @ G @ st.B_K
    v_new = (1 - 0.3) * st.V + 0.3 * (R * R + 1e-3)
    want = st.B_C @ (R * v_new ** (-1 / p)) @ st.B_K.T

    sx, Gx = _on(xp, st), asarray(xp, G)
    new, ok, u = optim.refresh_and_direction(sx, Gx, p=p, **kw)
    ref, _ = optim.refresh(sx, Gx, **kw)
    assert bool(to_numpy(ok))
    for a, b in zip(new, ref):
        xp_assert_close(a, b, rtol=1e-13)
    xp_assert_close(u, asarray(xp, want), rtol=1e-12)
    un_lagged = to_numpy(optim.direction(ref, Gx, p=p))
    assert np.max(np.abs(un_lagged - want)) > 1e-3  # the basis moved: the order matters


def test_kron_mode_steps_with_the_refreshed_factors():
    """Without ``V`` the order is the paper's: refresh, then the step with the new factors."""
    rng = np.random.default_rng(8)
    st, G = _state(rng, 5, 4)._replace(V=None), rng.standard_normal((5, 4))
    new, ok, u = optim.refresh_and_direction(st, G, p=2.0, precond_lr=0.3)
    ref, _ = optim.refresh(st, G, precond_lr=0.3)
    assert bool(ok) and all(np.array_equal(a, b) for a, b in zip(new[:5], ref[:5]))
    np.testing.assert_array_equal(u, optim.direction(ref, G, p=2.0))


def test_rejected_lagged_refresh_steps_with_the_last_good_v(monkeypatch):
    """A rejected refresh keeps the old state, ``V`` included, and the step uses it."""
    rng = np.random.default_rng(9)
    st, G = _state(rng, 5, 4), rng.standard_normal((5, 4))
    real = kron.update_rotated

    def poisoned(state, R, **kw):
        new = real(state, R, **kw)
        return new._replace(d_C=new.d_C * np.nan)

    monkeypatch.setattr(kron, "update_rotated", poisoned)
    new, ok, u = optim.refresh_and_direction(st, G, p=2.0, precond_lr=0.3)
    assert not bool(ok)
    for a, b in zip(new, st):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(u, optim.direction(st, G, p=2.0), rtol=1e-13)


def test_step_scale_p2_gives_root_p_direction_with_root_2_size():
    rng = np.random.default_rng(1)
    st, G = _state(rng, 4, 6), rng.standard_normal((4, 6))
    u3 = kron.precondition(st, G, p=3.0, norm_p=2.0)
    R = st.B_C.T @ G @ st.B_K
    dir3 = st.B_C @ (R * st.V ** (-1 / 3)) @ st.B_K.T
    size2 = np.linalg.norm(R * st.V**-0.5)
    np.testing.assert_allclose(u3, dir3 * (size2 / np.linalg.norm(dir3)), rtol=1e-12)


def test_first_state_sets_v_to_the_diagonal_of_s0_so_the_first_steps_agree():
    """``V₀ = α₀``: with S₀ = α₀ I both modes take the same first step."""
    pl, G = optim.plan((4, 3)), np.random.default_rng(2).standard_normal((4, 3))
    kron_st = optim.first_state(optim.init(pl, (4, 3)), G, damping=1e-3)
    corr_st = optim.first_state(optim.init(pl, (4, 3), eigenvalues="corrected"), G, damping=1e-3)
    np.testing.assert_array_equal(corr_st.V, np.full((4, 3), float(kron_st.alpha)))
    for p in (1.0, 2.0, 4.0):
        np.testing.assert_allclose(
            optim.direction(corr_st, G, p=p), optim.direction(kron_st, G, p=p), rtol=1e-13
        )


def _stream(seed: int, scale: np.ndarray, n: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield scale * rng.standard_normal(scale.shape)


@pytest.mark.slow  # 2 × 3000 refreshes (~3 s)
def test_corrected_eigenvalues_whiten_a_non_kronecker_diagonal_that_kron_cannot():
    """Gradients with independent entries of variance ``σ²_ij = a_i b_j M_ij`` (``M`` not of
    rank 1; ``a``, ``b`` spread so that the Kronecker eigenvalues do not tie and the
    eigenbasis is the standard one): the best Kronecker model cannot whiten them, whereas
    ``V`` converges to ``σ²``. The mean square of the ``p = 2`` step per entry must approach
    1 in the corrected mode only (measured 0.47 / 2.4 in log)."""
    m = np.array([[1.0, 10, 1], [10, 1, 1], [1, 1, 10], [1, 10, 1]])
    sigma = np.sqrt(np.outer([1.0, 4, 16, 64], [1.0, 8, 64]) * m)
    out = {}
    for ev in ("kron", "corrected"):
        o = optim.Options(precond_lr=0.05, p=2.0, eigenvalues=ev, precond_warmup=10**9)
        pl = optim.plan(sigma.shape)
        st = optim.init(pl, sigma.shape, eigenvalues=ev)
        sq = np.zeros(sigma.shape)
        for t, g in enumerate(_stream(3, sigma, 3000)):
            (st,), _, (u,) = optim.precondition_step(
                [st], [g], first=t == 0, refresh=True, reorth=t % 10 == 9, options=o
            )
            if t >= 1000:
                sq += u * u / 2000
        out[ev] = np.abs(np.log(sq)).max()  # worst entry's log mean square (0: whitened)
    assert out["corrected"] < 0.6, out
    assert out["kron"] > 1.5, out


def test_options_validate_and_state_keys():
    with pytest.raises(ValueError, match="`eigenvalues` must be one of"):
        optim.Options(eigenvalues="full")
    keys = optim.state_keys(optim.plan((4, 3)), optim.Options())  # the default: corrected
    kron_keys = optim.state_keys(optim.plan((4, 3)), optim.Options(eigenvalues="kron"))
    assert "V" in keys and "V" not in kron_keys
    assert "V" not in optim.state_keys(optim.plan((5,)), optim.Options(eigenvalues="corrected"))


def test_check_precond_rejects_a_bad_v():
    pl = optim.plan((4, 3))
    st = optim.init(pl, (4, 3), eigenvalues="corrected")
    optim.check_precond(st, pl, (4, 3))
    with pytest.raises(ValueError, match="`V` must be > 0"):
        optim.check_precond(st._replace(V=-st.V), pl, (4, 3))
    with pytest.raises(ValueError, match="`V` must have shape"):
        optim.check_precond(st._replace(V=st.V[:2]), pl, (4, 3))


def test_rejected_refresh_keeps_v():
    pl = optim.plan((4, 3))
    st = optim.first_state(
        optim.init(pl, (4, 3), eigenvalues="corrected"), np.ones((4, 3)), damping=0.0
    )
    with np.errstate(all="ignore"):
        new, ok = optim.refresh(st, np.full((4, 3), np.inf), precond_lr=0.1)
    assert not bool(ok)
    np.testing.assert_array_equal(new.V, st.V)


def test_stacked_layers_keep_their_own_v(xp):
    rng = np.random.default_rng(4)
    a, b = _state(rng, 3, 4), _state(rng, 3, 4)
    G = rng.standard_normal((2, 3, 4))
    stacked = optim.stack_precond([_on(xp, a), _on(xp, b)])
    new = kron.update_gop(stacked, asarray(xp, G), beta2=0.1, cayley="quadratic", exp="first_order")
    for k, one in enumerate((a, b)):
        alone = kron.update_gop(one, G[k], beta2=0.1, cayley="quadratic", exp="first_order")
        np.testing.assert_allclose(to_numpy(new.V)[k], alone.V, rtol=1e-12)


# ------------------------------------------------------------------ checkpoints
def _torch_run(opt, model, batches):
    import torch

    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _torch_problem(seed: int = 0):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)) for _ in range(11)
    ]
    return model, batches


def test_torch_resume_with_corrected_eigenvalues_is_bit_identical():
    import copy

    from spectral_curv.torch import SpectralKron

    model, batches = _torch_problem()
    hp = dict(lr=0.01, eigenvalues="corrected", precond_warmup=2, reorth_interval=2)
    ref_model = copy.deepcopy(model)
    _torch_run(SpectralKron(ref_model.parameters(), **hp), ref_model, batches)

    opt = SpectralKron(model.parameters(), **hp)
    _torch_run(opt, model, batches[:5])
    sd = copy.deepcopy(opt.state_dict())
    assert "V" in opt.state[model[0].weight]
    fresh = SpectralKron(model.parameters(), lr=1.0)  # the checkpoint's options win
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["eigenvalues"] == "corrected"
    _torch_run(fresh, model, batches[5:])
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert bool((p == q).all())


def test_torch_checkpoint_from_before_the_option_loads_as_kron():
    """A state dict saved before ``eigenvalues`` existed has no ``V``: it loads with the only
    mode it can have meant, whatever the new optimizer's option."""
    from spectral_curv.torch import SpectralKron

    model, batches = _torch_problem()
    opt = SpectralKron(model.parameters(), lr=0.01, eigenvalues="kron")
    _torch_run(opt, model, batches[:4])
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        del g["eigenvalues"]
    new = SpectralKron(model.parameters(), lr=0.01)  # the default: corrected
    new.load_state_dict(sd)
    assert new.param_groups[0]["eigenvalues"] == "kron"
    assert "V" not in new.state[model[0].weight]
    _torch_run(new, model, batches[4:])  # and it trains on


def test_numpy_checkpoint_from_before_the_option_loads_as_kron():
    from spectral_curv.numpy import SpectralKron

    rng = np.random.default_rng(5)
    P = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    opt = SpectralKron(P, lr=0.01, eigenvalues="kron")
    for _ in range(3):
        P = opt.step(P, {k: rng.standard_normal(v.shape) for k, v in P.items()})
    sd = opt.state_dict()
    del sd["options"]["eigenvalues"]
    new = SpectralKron(P, lr=0.01)  # the default: corrected
    new.load_state_dict(sd)
    assert new.options["eigenvalues"] == "kron"
    new.step(P, {k: rng.standard_normal(v.shape) for k, v in P.items()})


def test_numpy_checkpoint_from_before_nesterov_resumes_heavy_ball():
    """``nesterov`` (added later, default False) is False for a state dict without it, as
    the heavy-ball run it was saved from (``optim.BEFORE_OPTION``)."""
    from spectral_curv.numpy import SpectralKron

    rng = np.random.default_rng(6)
    P = {"w": rng.standard_normal((4, 3))}
    opt = SpectralKron(P, lr=0.01)
    P = opt.step(P, {"w": rng.standard_normal((4, 3))})
    sd = opt.state_dict()
    del sd["options"]["nesterov"]
    new = SpectralKron(P, lr=0.01, nesterov=True)
    new.load_state_dict(sd)
    assert new.options["nesterov"] is False
