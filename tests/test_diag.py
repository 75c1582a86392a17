"""Tests of the diagonal scheme ``spectral_curv.diag`` (math §3).

References: ``torch.optim.RMSprop`` / ``torch.optim.Adagrad`` (torch's own optimizers)
and plain numpy formulas written out here.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import asarray, to_numpy
from spectral_curv import diag
from spectral_curv._array import array_namespace

SHAPE = (3, 4)
STEPS = 20


def _problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = np.exp(rng.standard_normal(SHAPE))
    c = rng.standard_normal(SHAPE)
    mu0 = rng.standard_normal(SHAPE)
    return a, c, mu0


def grad_fn(a, c):
    """Gradient of a separable non-quadratic loss; works on every array namespace."""

    def grad(mu):
        xp = array_namespace(mu)
        return a * (mu - c) + 0.5 * xp.cos(3.0 * mu)

    return grad


def _step(state, mu, g, lr, beta2, gamma, damping, p, exp):
    """One step of the scheme: curvature first, then the preconditioned step (math §3)."""
    state = diag.update_gop(state, g, beta2=beta2, gamma=gamma, damping=damping, exp=exp)
    return state, mu - lr * diag.precondition(state, g, p=p)


def _step_first_order(state, mu, g, lr, beta2, gamma, damping, p):
    return _step(state, mu, g, lr, beta2, gamma, damping, p, "first_order")


def _step_exact(state, mu, g, lr, beta2, gamma, damping, p):
    return _step(state, mu, g, lr, beta2, gamma, damping, p, "exact")


def run_ours(xp, jit, exp, *, d0, lr, beta2, gamma, damping, p, seed=0):
    """Trajectory of our diag scheme on backend ``xp`` (jitted step under jax)."""
    a, c, mu0 = _problem(seed)
    grad = grad_fn(asarray(xp, a), asarray(xp, c))
    step = jit(_step_first_order if exp == "first_order" else _step_exact)
    state = diag.init(SHAPE, scale=d0, xp=xp)
    mu = asarray(xp, mu0)
    hyper = [asarray(xp, v) for v in (lr, beta2, gamma, damping, p)]
    traj = []
    for _ in range(STEPS):
        state, mu = step(state, mu, grad(mu), *hyper)
        traj.append(to_numpy(mu))
    return np.stack(traj), to_numpy(state.d)


def run_numpy_ref(exp, *, d0, lr, beta2, gamma, damping, p, seed=0):
    """The math §3 formulas written out in numpy."""
    a, c, mu = _problem(seed)
    d = np.full(SHAPE, d0)
    traj = []
    for _ in range(STEPS):
        g = a * (mu - c) + 0.5 * np.cos(3.0 * mu)
        if exp == "exact":
            d = d * np.exp(beta2 * (-gamma + (g**2 + damping) / d))
        else:
            d = (1 - gamma * beta2) * d + beta2 * (g**2 + damping)
        mu = mu - lr * g / d ** (1.0 / p)
        traj.append(mu)
    return np.stack(traj), d


def rmsprop_numpy(*, d0, lr, alpha, seed=0):
    """Plain RMSprop (torch's formula, eps = 0, no momentum, not centered)."""
    a, c, mu = _problem(seed)
    v = np.full(SHAPE, d0)
    traj = []
    for _ in range(STEPS):
        g = a * (mu - c) + 0.5 * np.cos(3.0 * mu)
        v = alpha * v + (1 - alpha) * g * g
        mu = mu - lr * g / np.sqrt(v)
        traj.append(mu)
    return np.stack(traj), v


def adagrad_numpy(*, d0, lr, seed=0):
    a, c, mu = _problem(seed)
    s = np.full(SHAPE, d0)
    traj = []
    for _ in range(STEPS):
        g = a * (mu - c) + 0.5 * np.cos(3.0 * mu)
        s = s + g * g
        mu = mu - lr * g / np.sqrt(s)
        traj.append(mu)
    return np.stack(traj), s


def _torch_trajectory(opt_factory, *, seed=0):
    torch = pytest.importorskip("torch")
    a, c, mu0 = _problem(seed)
    at, ct = torch.from_numpy(a), torch.from_numpy(c)
    param = torch.nn.Parameter(torch.from_numpy(mu0.copy()))
    opt = opt_factory(torch, param)
    traj = []
    for _ in range(STEPS):
        with torch.no_grad():
            param.grad = at * (param - ct) + 0.5 * torch.cos(3.0 * param)
        opt.step()
        traj.append(param.detach().numpy().copy())
    return np.stack(traj), opt


# --------------------------------------------------------------------------- RMSprop / AdaGrad

RMS = {"d0": 0.3, "lr": 0.01, "beta2": 0.1}


def test_rmsprop_equals_numpy_rmsprop(xp, jit):
    traj, d = run_ours(xp, jit, "first_order", gamma=1.0, damping=0.0, p=2.0, **RMS)
    ref, v = rmsprop_numpy(d0=RMS["d0"], lr=RMS["lr"], alpha=1 - RMS["beta2"])
    np.testing.assert_allclose(d, v, rtol=1e-13)
    np.testing.assert_allclose(traj, ref, rtol=1e-13, atol=1e-14)


def test_rmsprop_equals_torch_rmsprop():
    """``torch.optim.RMSprop(alpha=1−β₂, eps=0, momentum=0)`` with ``square_avg`` pre-set
    to ``d0`` through ``load_state_dict`` (the state is only created lazily otherwise).
    """

    def factory(torch, param):
        opt = torch.optim.RMSprop([param], lr=RMS["lr"], alpha=1 - RMS["beta2"], eps=0.0)
        sd = opt.state_dict()
        sd["state"] = {
            0: {
                "step": torch.tensor(0.0),
                "square_avg": torch.full(SHAPE, RMS["d0"], dtype=torch.float64),
            }
        }
        opt.load_state_dict(sd)
        return opt

    ref, opt = _torch_trajectory(factory)
    import torch

    np_ns = array_namespace(np.empty(0))
    traj, d = run_ours(np_ns, lambda f: f, "first_order", gamma=1.0, damping=0.0, p=2.0, **RMS)
    sq = next(iter(opt.state.values()))["square_avg"]
    assert sq.dtype == torch.float64
    np.testing.assert_allclose(d, sq.numpy(), rtol=1e-13)
    np.testing.assert_allclose(traj, ref, rtol=1e-13, atol=1e-14)
    # the pre-set state mattered: starting from torch's default square_avg = 0 differs
    ref0, _ = _torch_trajectory(
        lambda torch, prm: torch.optim.RMSprop([prm], lr=RMS["lr"], alpha=0.9, eps=0.0)
    )
    assert np.abs(ref0 - ref).max() > 1e-3


def test_adagrad_equals_numpy_adagrad(xp, jit):
    traj, d = run_ours(
        xp, jit, "first_order", d0=0.2, lr=0.05, beta2=1.0, gamma=0.0, damping=0.0, p=2.0
    )
    ref, s = adagrad_numpy(d0=0.2, lr=0.05)
    np.testing.assert_allclose(d, s, rtol=1e-13)
    np.testing.assert_allclose(traj, ref, rtol=1e-13, atol=1e-14)


def test_adagrad_equals_torch_adagrad():
    ref, opt = _torch_trajectory(
        lambda torch, prm: torch.optim.Adagrad(
            [prm], lr=0.05, initial_accumulator_value=0.2, eps=0.0
        )
    )
    np_ns = array_namespace(np.empty(0))
    traj, d = run_ours(
        np_ns,
        lambda f: f,
        "first_order",
        d0=0.2,
        lr=0.05,
        beta2=1.0,
        gamma=0.0,
        damping=0.0,
        p=2.0,
    )
    s = next(iter(opt.state.values()))["sum"]
    np.testing.assert_allclose(d, s.numpy(), rtol=1e-13)
    np.testing.assert_allclose(traj, ref, rtol=1e-13, atol=1e-14)


# --------------------------------------------------------------------------- other roots / modes


@pytest.mark.parametrize(
    ("exp", "p", "gamma", "damping"),
    [
        ("first_order", 4.0, 1.0, 0.0),
        ("first_order", 1.0, 0.5, 1e-2),
        ("exact", 2.0, 1.0, 0.0),
        ("exact", 4.0, 0.0, 1e-3),
        ("exact", 3.7, 0.7, 0.0),
    ],
)
def test_trajectory_matches_numpy_formula(xp, jit, exp, p, gamma, damping):
    kw = {"d0": 0.5, "lr": 0.02, "beta2": 0.2, "gamma": gamma, "damping": damping, "p": p}
    traj, d = run_ours(xp, jit, exp, **kw)
    ref, dref = run_numpy_ref(exp, **kw)
    assert np.all(d > 0)
    np.testing.assert_allclose(d, dref, rtol=1e-13)
    np.testing.assert_allclose(traj, ref, rtol=1e-13, atol=1e-14)


def test_exact_mode_keeps_d_positive_for_negative_delta(xp, jit):
    """Generic ``update``: ``d ← d ⊙ exp(β₂δ/d)`` stays positive where ``d + β₂δ`` would not."""
    d0 = np.array([0.1, 1.0, 2.0, 5.0])
    delta = np.array([-3.0, 0.5, -10.0, 0.0])
    st = diag.DiagState(asarray(xp, d0))
    f = jit(lambda s, dl: diag.update(s, dl, beta2=0.5))
    out = to_numpy(f(st, asarray(xp, delta)).d)
    np.testing.assert_allclose(out, d0 * np.exp(0.5 * delta / d0), rtol=1e-15)
    assert np.all(out > 0)
    g = jit(lambda s, dl: diag.update(s, dl, beta2=0.5, exp="first_order"))
    np.testing.assert_allclose(to_numpy(g(st, asarray(xp, delta)).d), d0 + 0.5 * delta)


@pytest.mark.parametrize("exp", ["exact", "first_order"])
def test_batch_of_gradients_is_mean_gop(xp, jit, exp):
    rng = np.random.default_rng(1)
    d0 = np.exp(rng.standard_normal(SHAPE))
    g = rng.standard_normal((5, *SHAPE))
    st = diag.DiagState(asarray(xp, d0))
    f = jit(lambda s, g_: diag.update_gop(s, g_, beta2=0.3, gamma=1.0, damping=0.1, exp=exp))
    out = to_numpy(f(st, asarray(xp, g)).d)
    m = np.mean(g**2, axis=0)
    if exp == "exact":
        ref = d0 * np.exp(0.3 * (-1.0 + (m + 0.1) / d0))
    else:
        ref = 0.7 * d0 + 0.3 * (m + 0.1)
    np.testing.assert_allclose(out, ref, rtol=1e-14)
    # one gradient whose square is the batch mean gives the same result
    single = to_numpy(f(st, asarray(xp, np.sqrt(m))).d)
    np.testing.assert_allclose(out, single, rtol=1e-14)


@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (2, 3, 4)])
def test_any_shape(xp, jit, shape):
    rng = np.random.default_rng(2)
    d0 = np.exp(rng.standard_normal(shape))
    g = rng.standard_normal(shape)
    v = rng.standard_normal((2, *shape))  # broadcasts against d
    st = diag.DiagState(asarray(xp, d0))

    def step(s, g_, v_):
        s = diag.update_gop(s, g_, beta2=0.1)
        return s, diag.precondition(s, v_, p=3.0), diag.logdet(s), diag.dense(s, -1.0)

    st1, pv, ld, dn = jit(step)(st, asarray(xp, g), asarray(xp, v))
    d1 = d0 * np.exp(0.1 * (-1.0 + g**2 / d0))
    np.testing.assert_allclose(to_numpy(st1.d), d1, rtol=1e-14)
    assert tuple(st1.d.shape) == shape
    np.testing.assert_allclose(to_numpy(pv), v * d1 ** (-1.0 / 3.0), rtol=1e-14)
    assert float(to_numpy(ld)) == pytest.approx(np.linalg.slogdet(np.diag(d1.ravel()))[1])
    np.testing.assert_allclose(to_numpy(dn), np.linalg.inv(np.diag(d1.ravel())), rtol=1e-14)


def test_init(xp):
    st = diag.init((2, 3), scale=0.25, xp=xp)
    assert tuple(st.d.shape) == (2, 3)
    assert st.d.dtype == xp.float64
    np.testing.assert_array_equal(to_numpy(st.d), np.full((2, 3), 0.25))
    st32 = diag.init(4, dtype=xp.float32, xp=xp)
    g = xp.asarray(np.ones(4), dtype=xp.float32)
    out = diag.update_gop(st32, g, beta2=0.1)
    assert out.d.dtype == xp.float32
    assert diag.precondition(out, g, p=2).dtype == xp.float32


@pytest.mark.parametrize(("gamma", "beta2"), [(1.0, 1.0), (1.0, 2.0), (2.0, 0.5)])
def test_first_order_gop_needs_gamma_beta2_below_one(gamma, beta2):
    """``exp="first_order"`` with ``γβ₂ ≥ 1``: ``d ← (1 − γβ₂)d + β₂g²`` gave ``d = −1`` (from
    ``d = 1, g = 0, γβ₂ = 2``) and NaN roots after (issue 15): a ValueError naming both."""
    st = diag.init(3)
    g = np.array([0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=r"`gamma` \* `beta2` must be < 1"):
        diag.update_gop(st, g, beta2=beta2, gamma=gamma, exp="first_order")
    with pytest.raises(ValueError, match=r"`gamma` \* `beta2` must be < 1"):
        diag.update_gop(st, g, beta2=beta2, gamma=gamma, exp="first_order", check=False)
    assert np.all(diag.update_gop(st, g, beta2=beta2, gamma=gamma).d > 0)  # exact map: fine
    st1 = diag.update_gop(st, g, beta2=0.99 / gamma, gamma=gamma, exp="first_order")
    assert np.all(st1.d > 0)
    assert np.all(diag.update_gop(st, g, beta2=5.0, gamma=0.0, exp="first_order").d > 0)
