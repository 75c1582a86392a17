"""Tests of the optax adapter ``spectral_curv.optax`` (math §3–§5 through ``optim``).

Trajectories are compared with a hand-written NumPy float64 loop over ``spectral_curv.optim``
and with the torch optimizer; then jit, ``inject_hyperparams``, schedules, dtypes, chaining,
routing, ``jax.grad`` through a step, a digits classifier and the argument checks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("optax")
jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from spectral_curv import optim  # noqa: E402
from spectral_curv.optax import (  # noqa: E402
    SPECTRAL,
    STATIC_ARGS,
    ScaleBySpectralKronState,
    clip_by_update_rms,
    order_labels,
    scale_by_spectral_kron,
    spectral_kron,
    validate_state,
)


@pytest.fixture
def x64() -> Iterator[None]:
    """float64 for this test only (restores the previous setting)."""
    with jax.enable_x64(True):
        yield


# --------------------------------------------------------------------------- the MLP

SHAPES = {"W1": (8, 5), "b1": (8,), "W2": (3, 8), "b2": (3,)}
STEPS = 30


def _problem(seed: int = 0) -> tuple[dict[str, np.ndarray], list[tuple[np.ndarray, ...]]]:
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s) * (0.5 if k[0] == "W" else 0.1) for k, s in SHAPES.items()}
    X = rng.standard_normal((64, 5))
    Y = np.stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2], np.cos(X[:, 3] + X[:, 4])], axis=1)
    batches = []
    for _ in range(STEPS):
        idx = rng.choice(64, 16, replace=False)
        batches.append((X[idx], Y[idx]))
    return params, batches


def _np_grads(P: dict[str, np.ndarray], batch: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """Hand-written backprop of ``0.5 mean_n ‖tanh(X W1ᵀ + b1) W2ᵀ + b2 − Y‖²``."""
    X, Y = batch
    h = np.tanh(X @ P["W1"].T + P["b1"])
    r = (h @ P["W2"].T + P["b2"] - Y) / X.shape[0]
    dz = (r @ P["W2"]) * (1 - h * h)
    return {"W1": dz.T @ X, "b1": dz.sum(0), "W2": r.T @ h, "b2": r.sum(0)}


def _jax_loss(P: Any, batch: tuple[Any, ...]) -> Any:
    X, Y = batch
    h = jnp.tanh(X @ P["W1"].T + P["b1"])
    return 0.5 * jnp.mean(jnp.sum((h @ P["W2"].T + P["b2"] - Y) ** 2, axis=1))


def _numpy_reference(
    params: dict[str, np.ndarray], batches: list, cfg: dict[str, Any]
) -> tuple[list[dict[str, np.ndarray]], list[bool]]:
    """The optimizer written out with ``optim`` in NumPy float64 (torch's step order)."""
    xp = optim.namespace(np.zeros(1))
    c = {
        "precond_lr": 0.1,
        "p": 1.5,  # the default
        "gamma": 1.0,
        "damping": 1e-8,
        "momentum": 0.9,
        "nesterov": False,  # the default
        "weight_decay": 0.0,
        "update_interval": 2,
        "precond_warmup": 10,
        "reorth_interval": 5,  # the default
        "cayley": "quadratic",
        "cayley_terms": 1,
        "exp": "first_order",
        "max_update_rms": 3.0,  # the default
        "graft": None,
        "graft_betas": (0.9, 0.999),
        "graft_eps": 1e-8,
        "max_precond_dim": 4096,
        "eigenvalues": "corrected",  # the default
        **cfg,
    }
    P = {k: v.copy() for k, v in params.items()}
    S = {}
    for k, v in P.items():
        pl = optim.plan(v.shape, c["max_precond_dim"])
        S[k] = {
            "prec": optim.init(
                pl,
                optim.matrix_shape(pl, v.shape),
                eigenvalues=c["eigenvalues"],
                dtype=np.float64,
                xp=xp,
            ),
            "refreshes": 0,
            "buf": np.zeros_like(v),
            "ea": np.zeros_like(v),
            "eas": np.zeros_like(v),
        }
    ropts = {k: c[k] for k in ("gamma", "damping", "cayley", "exp", "cayley_terms")}
    traj, clipped = [], []
    for t, batch in enumerate(batches):
        grads = _np_grads(P, batch)
        for k, g in grads.items():
            s = S[k]
            first, refresh, reorth = optim.schedule(
                t,
                s["refreshes"],
                update_interval=c["update_interval"],
                precond_warmup=c["precond_warmup"],
                reorth_interval=c["reorth_interval"],
                cayley=c["cayley"],
            )
            prec = s["prec"]
            G = g.reshape(optim.matrix_shape(optim.plan(g.shape, c["max_precond_dim"]), g.shape))
            if first:
                prec = optim.first_state(prec, G, damping=c["damping"])
            pre = prec
            if refresh:
                prec, _ = optim.refresh(prec, G, precond_lr=c["precond_lr"], **ropts)
                s["refreshes"] += 1
                if reorth:
                    prec = optim.reorthonormalize(prec)
            s["prec"] = prec
            if getattr(prec, "V", None) is not None:  # the lagged order: V's own basis
                prec = pre._replace(V=prec.V)
            norm_p = 2.0 if c.get("step_scale", "p2") == "p2" else None
            u = optim.direction(prec, G, p=c["p"], norm_p=norm_p).reshape(g.shape)
            if c["graft"] == "adam":
                u, s["ea"], s["eas"] = optim.graft_adam(
                    u, g, s["ea"], s["eas"], step=t + 1, betas=c["graft_betas"], eps=c["graft_eps"]
                )
            if c["max_update_rms"] is not None:
                clipped.append(bool(np.sqrt(np.mean(u * u)) > c["max_update_rms"]))
                u = optim.clip_rms(u, c["max_update_rms"])
            s["buf"] = optim.add_momentum(s["buf"], u, c["momentum"])
            v = u + c["momentum"] * s["buf"] if c["nesterov"] else s["buf"]
            P[k] = optim.apply_update(P[k], v, lr=c["lr"], weight_decay=c["weight_decay"])
        traj.append({k: v.copy() for k, v in P.items()})
    return traj, clipped


def _kw(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` without ``lr``, factors in float64 (as the NumPy and torch references)."""
    return {**{k: v for k, v in cfg.items() if k != "lr"}, "precond_dtype": jnp.dtype("float64")}


def _optax_run(opt: Any, params: dict[str, np.ndarray], batches: list) -> list[dict]:
    P = {k: jnp.asarray(v) for k, v in params.items()}
    state = opt.init(P)

    @jax.jit
    def step(P: Any, state: Any, X: Any, Y: Any) -> tuple[Any, Any]:
        g = jax.grad(_jax_loss)(P, (X, Y))
        u, state = opt.update(g, state, P)
        return optax.apply_updates(P, u), state

    traj = []
    for X, Y in batches:
        P, state = step(P, state, jnp.asarray(X), jnp.asarray(Y))
        traj.append({k: np.asarray(v) for k, v in P.items()})
    return traj


def _torch_run(params: dict[str, np.ndarray], batches: list, cfg: dict[str, Any]) -> list[dict]:
    torch = pytest.importorskip("torch")
    from spectral_curv.torch import SpectralKron

    P = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    kw = {k: v for k, v in cfg.items() if k != "lr"}
    opt = SpectralKron(list(P.values()), lr=cfg["lr"], precond_dtype=torch.float64, **kw)
    traj = []
    for X, Y in batches:
        X, Y = torch.tensor(X), torch.tensor(Y)
        h = torch.tanh(X @ P["W1"].T + P["b1"])
        loss = 0.5 * ((h @ P["W2"].T + P["b2"] - Y) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        traj.append({k: v.detach().numpy().copy() for k, v in P.items()})
    return traj


def _max_rel(a: list[dict], b: list[dict]) -> float:
    return max(
        float(np.linalg.norm(x[k] - y[k]) / np.linalg.norm(y[k])) for x, y in zip(a, b) for k in x
    )


CONFIGS = {
    # warm-up, interval and re-orthonormalisation all active; one side of each weight diagonal
    "quadratic": dict(
        lr=0.02,
        precond_lr=0.1,
        momentum=0.9,
        update_interval=3,
        precond_warmup=4,
        reorth_interval=3,
        max_precond_dim=6,
    ),
    "exact_graft": dict(
        lr=0.01,
        precond_lr=0.2,
        p=1.0,
        cayley="exact",
        exp="exact",
        graft="adam",
        max_update_rms=0.6,
        weight_decay=0.05,
        momentum=0.5,
        nesterov=True,  # Nesterov's step (the default is heavy ball)
        update_interval=2,
        precond_warmup=3,
    ),
    "corrected_eigenvalues": dict(
        lr=0.02, eigenvalues="corrected", p=1.5, update_interval=2, precond_warmup=3
    ),
}


#: a jit compilation each (~3 s): one configuration in the quick run, the others under `slow`
TRAJECTORIES = [
    name if name == "quadratic" else pytest.param(name, marks=pytest.mark.slow) for name in CONFIGS
]


@pytest.mark.parametrize("name", TRAJECTORIES)
def test_trajectory_matches_numpy_and_torch(name: str, x64: None) -> None:
    cfg = CONFIGS[name]
    params, batches = _problem()
    ref, clipped = _numpy_reference(params, batches, cfg)
    kw = _kw(cfg)
    got = _optax_run(spectral_kron(cfg["lr"], **kw), params, batches)
    err = _max_rel(got, ref)
    moved = _max_rel([params] * STEPS, ref)
    print(f"{name}: optax vs numpy max rel err {err:.2e} (params moved {moved:.2e})")
    assert moved > 1e-2  # the optimizer did something
    assert err <= 1e-10
    if cfg.get("max_update_rms") is not None:
        assert any(clipped) and not all(clipped)  # the clip binds on some steps only
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    tt = _torch_run(params, batches, cfg)
    terr = _max_rel(got, tt)
    print(f"{name}: optax vs torch max rel err {terr:.2e}")
    assert terr <= 1e-10


@pytest.mark.slow
def test_inject_hyperparams_matches_numpy_and_controls_lr(x64: None) -> None:
    cfg = CONFIGS["quadratic"]
    params, batches = _problem(1)
    ref, _ = _numpy_reference(params, batches, cfg)
    # every numeric option (reorth_interval, update_interval, ... included) becomes traced
    inj = optax.inject_hyperparams(spectral_kron)(
        learning_rate=cfg["lr"], weight_decay=0.0, **_kw(cfg)
    )
    got = _optax_run(inj, params, batches)
    err = _max_rel(got, ref)
    print(f"inject_hyperparams: optax vs numpy max rel err {err:.2e}")
    assert err <= 1e-10
    # changing the learning rate in the state changes the step (the update is linear in lr)
    P = {k: jnp.asarray(v) for k, v in params.items()}
    g = jax.grad(_jax_loss)(P, tuple(map(jnp.asarray, batches[0])))
    state = inj.init(P)
    upd = jax.jit(inj.update)
    u1, _ = upd(g, state, P)
    state.hyperparams["learning_rate"] = jnp.asarray(3 * cfg["lr"])
    u3, _ = upd(g, state, P)
    for k in u1:
        np.testing.assert_allclose(np.asarray(u3[k]), 3 * np.asarray(u1[k]), rtol=1e-12)
        assert np.linalg.norm(np.asarray(u1[k])) > 0
    # the static_args route gives the same numbers, and its `init` may run under jit
    inj_s = optax.inject_hyperparams(spectral_kron, static_args=STATIC_ARGS)(
        learning_rate=cfg["lr"], **_kw(cfg)
    )
    u_s, _ = jax.jit(inj_s.update)(g, jax.jit(inj_s.init)(P), P)
    for k in u1:
        np.testing.assert_allclose(np.asarray(u_s[k]), np.asarray(u1[k]), rtol=1e-12)


@pytest.mark.slow
def test_schedule_direct_and_injected(x64: None) -> None:
    params, batches = _problem(2)
    sched = optax.piecewise_constant_schedule(0.02, {5: 0.0})  # lr = 0 from step 5 on
    for opt in (spectral_kron(sched), optax.inject_hyperparams(spectral_kron)(sched)):
        traj = _optax_run(opt, params, batches[:10])
        assert _max_rel([traj[3]], [traj[4]]) > 1e-4  # step 4 still moves
        assert _max_rel(traj[5:], [traj[4]] * 5) == 0.0  # lr = 0: frozen


# two jit compilations (~6-8 s): `slow`; the quick run jits spectral_kron (a chain of
# scale_by_spectral_kron) in tests/test_engine.py
@pytest.mark.slow
def test_jit_init_and_update_and_chain(x64: None) -> None:
    params, batches = _problem(3)
    P = {k: jnp.asarray(v) for k, v in params.items()}
    wd, lr = 0.1, 0.05
    chain = optax.chain(
        scale_by_spectral_kron(precond_warmup=2),
        optax.add_decayed_weights(wd),
        optax.scale_by_learning_rate(lr),
    )
    pre = scale_by_spectral_kron(precond_warmup=2)
    sc, sp = jax.jit(chain.init)(P), jax.jit(pre.init)(P)
    cupd, pupd = jax.jit(chain.update), jax.jit(pre.update)
    for X, Y in batches[:6]:
        g = jax.grad(_jax_loss)(P, (jnp.asarray(X), jnp.asarray(Y)))
        uc, sc = cupd(g, sc, P)
        up, sp = pupd(g, sp, P)
        for k in P:
            want = -lr * (np.asarray(up[k]) + wd * np.asarray(P[k]))
            np.testing.assert_allclose(np.asarray(uc[k]), want, rtol=1e-12, atol=1e-15)
            assert np.linalg.norm(np.asarray(up[k])) > 0
        P = optax.apply_updates(P, uc)
    assert int(sp.count) == 6 and int(sp.refreshes) == 4  # steps 0, 1 (warm-up), 2, 4
    assert all(int(r) == 0 for r in jax.tree.leaves(sp.rejected))


@pytest.mark.slow
def test_routing_others(x64: None) -> None:
    params, batches = _problem(4)
    P = {k: jnp.asarray(v) for k, v in params.items()}
    g = jax.grad(_jax_loss)(P, tuple(map(jnp.asarray, batches[0])))
    labels = order_labels(P)
    assert labels == {"W1": SPECTRAL, "b1": "other", "W2": SPECTRAL, "b2": "other"}
    routed = spectral_kron(0.01, others={"other": optax.sgd(0.5)})
    plain = spectral_kron(0.01)
    ur, _ = jax.jit(routed.update)(g, routed.init(P), P)
    up, _ = jax.jit(plain.update)(g, plain.init(P), P)
    for k in ("b1", "b2"):
        np.testing.assert_allclose(np.asarray(ur[k]), -0.5 * np.asarray(g[k]), rtol=1e-14)
    for k in ("W1", "W2"):
        np.testing.assert_allclose(np.asarray(ur[k]), np.asarray(up[k]), rtol=1e-14)
    with pytest.raises(ValueError, match="others"):
        spectral_kron(0.01, others={SPECTRAL: optax.sgd(0.1)})


@pytest.mark.slow
@pytest.mark.parametrize("pdt", ["bfloat16", "float32"])
def test_dtypes_preserved(pdt: str) -> None:
    dt = jnp.dtype(pdt)
    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)
    P = {
        "w": jax.random.normal(k1, (6, 4)).astype(dt),
        "b": jnp.zeros(4, dt),
        "v": jax.random.normal(k2, (5, 3), jnp.float32),
        "s": jnp.asarray(1.0, jnp.float32),
    }
    target = jax.random.normal(k3, (6, 4))

    def loss(P: Any) -> Any:
        out = (P["w"].astype(jnp.float32) + P["b"].astype(jnp.float32)) * P["s"]
        return jnp.sum((out - target) ** 2) + jnp.sum(P["v"] ** 2)

    opt = spectral_kron(1e-2, max_update_rms=1.0, weight_decay=1e-3, graft="adam")
    state = opt.init(P)
    factors = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert all(x.dtype in (jnp.float32, dt) for x in factors)
    prec = jax.tree.leaves(state[0].precond)
    assert prec and all(x.dtype == jnp.float32 for x in prec)

    @jax.jit
    def step(P: Any, state: Any) -> tuple[Any, Any, Any]:
        u, state = opt.update(jax.grad(loss)(P), state, P)
        return optax.apply_updates(P, u), state, u

    l0 = float(loss(P))
    for _ in range(8):
        P, state, u = step(P, state)
        for k in P:
            want = dt if k in ("w", "b") else jnp.float32
            assert u[k].dtype == want and P[k].dtype == want
            assert bool(jnp.all(jnp.isfinite(P[k].astype(jnp.float32))))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state[0].precond))
    assert float(loss(P)) < l0


def test_empty_tree_and_params_none_as_optax_transforms_take_them() -> None:
    """optax conventions: an empty parameter tree updates under ``jit`` (it raised a
    TracerBoolConversionError: the host-callback switch looked for traced leaves), and
    ``update(grads, state)`` without ``params`` works at the default ``weight_decay=0`` (as
    ``optax.adam``), while a non-zero one still asks for them (as ``optax.adamw``)."""
    for opt in (spectral_kron(1e-2), spectral_kron(1e-2, nonfinite="skip")):
        u, _ = jax.jit(opt.update)({}, opt.init({}), {})
        assert u == {}
    P = {"w": jnp.ones((3, 4)), "b": jnp.ones(3)}
    g = jax.tree.map(lambda x: 0.1 * x, P)
    opt = spectral_kron(1e-2)
    u_none, _ = jax.jit(opt.update)(g, opt.init(P))
    u_params, _ = jax.jit(opt.update)(g, opt.init(P), P)
    for k in P:
        np.testing.assert_array_equal(np.asarray(u_none[k]), np.asarray(u_params[k]))
    wd = spectral_kron(1e-2, weight_decay=1e-2)
    with pytest.raises(ValueError, match="params"):
        wd.update(g, wd.init(P))


def test_jit_keeps_the_basis_orthogonal_across_gradient_scale_jumps() -> None:
    """Regression (found by fuzzing): under ``jax.jit`` the damped generator read ``d``'s
    two broadcasts with different roundings (XLA fusion), so a 300×2 layer whose gradient
    scale jumps by 10⁹ got refreshes rejected as exploding and then a basis with
    ``‖BᵀB − I‖ = 0.77`` accepted; the eager run of the same steps stays orthogonal."""
    rs = np.random.RandomState(0)
    P = {"w": jnp.asarray(rs.randn(300, 2), jnp.float32)}
    opt = spectral_kron(1e-2)
    state = opt.init(P)
    upd = jax.jit(opt.update)
    for scale in (1.0, 1.0, 1.0, 1e3, 1.0, 1e-6, 1e-6, 1.0, 1e-6, 1.0, 1.0, 1e3):
        g = {"w": jnp.asarray(rs.randn(300, 2) * scale, jnp.float32)}
        u, state = upd(g, state, P)
        P = optax.apply_updates(P, u)
        b = np.asarray(state[0].precond["w"].B_C, np.float64)
        assert np.abs(b.T @ b - np.eye(300)).max() < 1e-2
    assert int(state[0].rejected["w"]) == 0


def test_derivative_of_an_update_is_the_direction_map(x64: None) -> None:
    """The update's derivative in the gradient is the direction map of the factors the step
    used, ``dG ↦ direction(S, dG)`` (``∂U/∂G = S^{-1/p}``, factors constant), on a refresh step
    (lagged basis) and a plain step, for p = 2 and 1: the engine's direction is formed once
    and differentiated by a JVP rule (``optax/_scale.py``), checked here against the core."""
    from spectral_curv import kron

    params, batches = _problem(4)
    P = {k: jnp.asarray(v) for k, v in params.items()}
    rng = np.random.default_rng(0)
    dG = {k: jnp.asarray(rng.standard_normal(v.shape)) for k, v in P.items()}
    for p in (2.0, 1.0):
        tx = scale_by_spectral_kron(p=p, precond_warmup=2)
        state = tx.init(P)
        for b in batches[:5]:  # past the warm-up: distinct eigenvalues
            _, state = tx.update(jax.grad(_jax_loss)(P, tuple(map(jnp.asarray, b))), state)
        for _ in range(2):  # count 5: a plain step (update_interval 2), then a refresh step
            G = jax.grad(_jax_loss)(P, tuple(map(jnp.asarray, batches[6])))
            (u, new), (du, _) = jax.jvp(lambda g, tx=tx, s=state: tx.update(g, s), (G,), (dG,))
            for k in P:
                old_k, new_k = state.precond[k], new.precond[k]
                used = kron.lagged(old_k, new_k) if optim.lagged(new_k) else new_k
                shape = (used.d_C.shape[-1], used.d_K.shape[-1]) if optim.lagged(new_k) else None
                g = G[k] if shape is None else jnp.reshape(G[k], shape)
                dg = dG[k] if shape is None else jnp.reshape(dG[k], shape)
                norm_p = optim.step_norm_p("p2")
                ref_u = optim.direction(used, g, p=p, norm_p=norm_p)
                np.testing.assert_allclose(np.ravel(u[k]), np.ravel(ref_u), rtol=1e-10, atol=1e-12)
                if p == 2.0:  # linear in G: the derivative is the map itself
                    ref_du = optim.direction(used, dg, p=p, norm_p=norm_p)
                else:  # the p2 step scale depends on G: its JVP, factors held constant
                    ref_du = jax.jvp(
                        lambda x, st=used, p=p, q=norm_p: optim.direction(st, x, p=p, norm_p=q),
                        (g,),
                        (dg,),
                    )[1]
                np.testing.assert_allclose(np.ravel(du[k]), np.ravel(ref_du), rtol=1e-9, atol=1e-12)
                assert float(jnp.max(jnp.abs(du[k]))) > 0
            state = new


@pytest.mark.slow
def test_grad_through_a_step(x64: None) -> None:
    params, batches = _problem(5)
    P = {k: jnp.asarray(v) for k, v in params.items()}
    b0, b1 = (tuple(map(jnp.asarray, b)) for b in batches[:2])
    opt = spectral_kron(0.05, graft="adam", max_update_rms=1.0)
    warm = opt.init(P)
    upd = jax.jit(opt.update)
    for b in batches[2:6]:  # a state past the first step, with distinct eigenvalues
        _, warm = upd(jax.grad(_jax_loss)(P, tuple(map(jnp.asarray, b))), warm, P)

    def meta(P: Any, state: Any) -> Any:
        u, _ = opt.update(jax.grad(_jax_loss)(P, b0), state, P)
        return _jax_loss(optax.apply_updates(P, u), b1)

    for state in (opt.init(P), warm):
        val, grads = jax.jit(jax.value_and_grad(meta))(P, state)
        assert np.isfinite(float(val))
        leaves = jax.tree.leaves(grads)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
        assert sum(float(jnp.sum(x * x)) for x in leaves) > 0


@pytest.mark.slow
def test_equinox_digits() -> None:
    eqx = pytest.importorskip("equinox")
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    t0 = time.perf_counter()
    X, y = datasets.load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = model_selection.train_test_split(
        X / 16.0, y, test_size=0.25, random_state=0, stratify=y
    )
    Xtr, Xte = jnp.asarray(Xtr, jnp.float32), jnp.asarray(Xte, jnp.float32)
    ytr, yte = jnp.asarray(ytr), jnp.asarray(yte)
    model = eqx.nn.MLP(
        64, 10, width_size=64, depth=1, activation=jax.nn.tanh, key=jax.random.PRNGKey(0)
    )
    opt = spectral_kron(3e-3, weight_decay=1e-4)
    state = opt.init(eqx.filter(model, eqx.is_array))

    def loss(model: Any, X: Any, y: Any) -> Any:
        logits = jax.vmap(model)(X)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @eqx.filter_jit
    def step(model: Any, state: Any) -> tuple[Any, Any, Any]:
        params, static = eqx.partition(model, eqx.is_array)
        val, g = jax.value_and_grad(lambda p: loss(eqx.combine(p, static), Xtr, ytr))(params)
        u, state = opt.update(g, state, params)
        return eqx.combine(optax.apply_updates(params, u), static), state, val

    for _ in range(200):
        model, state, val = step(model, state)
    acc = float(jnp.mean(jnp.argmax(jax.vmap(model)(Xte), axis=1) == yte))
    print(
        f"digits: test accuracy {acc:.4f}, final train loss {float(val):.4f}, "
        f"{time.perf_counter() - t0:.1f} s"
    )
    assert acc >= 0.9


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"precond_lr": 0.0}, "precond_lr"),
        ({"p": -2.0}, "`p`"),
        ({"gamma": -1.0}, "gamma"),
        ({"damping": float("nan")}, "damping"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"update_interval": 0}, "update_interval"),
        ({"precond_warmup": -1}, "precond_warmup"),
        ({"reorth_interval": 1.5}, "reorth_interval"),
        ({"cayley": "cubic"}, "cayley"),
        ({"exp": "second_order"}, "exp"),
        ({"cayley_terms": -1}, "cayley_terms"),
        ({"max_update_rms": 0.0}, "max_update_rms"),
        ({"graft": "sgd"}, "graft"),
        ({"graft_betas": (0.9, 1.0)}, "graft_betas"),
        ({"precond_dtype": jnp.int32}, "precond_dtype"),
        ({"max_precond_dim": 0}, "max_precond_dim"),
        ({"precond_lr": 2.0}, "precond_lr"),  # γ·β₂ ≥ 1 with exp="first_order"
    ],
)
def test_bad_hyperparameters(kwargs: dict[str, Any], name: str) -> None:
    kw = {"learning_rate": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=name):
        spectral_kron(**kw)


def test_clip_by_update_rms_rejects_bad_value() -> None:
    with pytest.raises(ValueError, match="max_update_rms"):
        clip_by_update_rms(-1.0)


# --------------------------------------------------------------------------- JAX conventions
# Found by an outside probe of optax's conventions (each failed before the fix).


def _spectral_states(state: Any) -> list[Any]:
    own = lambda x: isinstance(x, ScaleBySpectralKronState)  # noqa: E731
    return [x for x in jax.tree.leaves(state, is_leaf=own) if own(x)]


def test_vmap_over_update_checks_each_problem() -> None:
    """Under ``jax.vmap`` the host check's ``lax.cond`` is a select: both branches ran and a
    finite batch raised "a gradient contains NaN or inf". Now each problem is checked."""
    P = {"w": jnp.ones((2, 4, 3))}
    G = {"w": jnp.linspace(0.1, 1.0, 24).reshape(2, 4, 3)}
    opt = spectral_kron(1e-2)
    u, _ = jax.jit(jax.vmap(opt.update))(G, jax.vmap(opt.init)(P))
    jax.effects_barrier()
    for i in range(2):  # each problem as if stepped alone
        one, _ = opt.update({"w": G["w"][i]}, opt.init({"w": P["w"][i]}))
        np.testing.assert_allclose(np.asarray(u["w"][i]), np.asarray(one["w"]), rtol=1e-5)
    bad = {"w": G["w"].at[1, 0, 0].set(jnp.nan)}
    with pytest.raises(Exception, match="NaN or inf"):
        jax.jit(jax.vmap(opt.update))(bad, jax.vmap(opt.init)(P))
        jax.effects_barrier()
    skip = spectral_kron(1e-2, nonfinite="skip")
    u, st = jax.jit(jax.vmap(skip.update))(bad, jax.vmap(skip.init)(P))
    assert np.asarray(_spectral_states(st)[0].skipped).tolist() == [0, 1]
    assert bool(jnp.all(u["w"][1] == 0)) and bool(jnp.any(u["w"][0] != 0))


def test_graft_state_can_be_donated() -> None:
    """``graft="adam"``: ``init`` gave the same tree for both moments, so ``jit`` with the
    state donated failed ("Attempt to donate the same buffer twice")."""
    opt = spectral_kron(1e-2, graft="adam")
    P = {"w": jnp.ones((4, 3))}
    state = opt.init(P)
    u, _ = jax.jit(opt.update, donate_argnums=1)({"w": jnp.full((4, 3), 0.3)}, state, P)
    assert bool(jnp.all(jnp.isfinite(u["w"])))


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": 1e-3, "momentum": 1.5}, "momentum"),
        ({"learning_rate": 1e-3, "precond_lr": -0.5}, "precond_lr"),
        ({"learning_rate": 1e-3, "p": 0.0}, "p"),
        ({"learning_rate": 1e-3, "update_interval": 0}, "update_interval"),
    ],
)
def test_concrete_jax_array_options_are_validated(kw: dict[str, Any], name: str) -> None:
    """A concrete (not traced) jax array is checked like a Python number: array_api_compat
    counts every jax array as lazy, so these passed and gave NaN updates later. Through
    ``inject_hyperparams`` (arrays at ``init``) too."""
    with pytest.raises(ValueError, match=f"`{name}`"):
        spectral_kron(**{k: jnp.asarray(v) for k, v in kw.items()})
    with pytest.raises(ValueError, match=f"`{name}`"):
        optax.inject_hyperparams(spectral_kron)(**kw).init({"w": jnp.ones((4, 3))})


@pytest.mark.parametrize("bad", ["w", "b"])
def test_nonfinite_skips_the_whole_step_with_others(bad: str) -> None:
    """With ``others``, a NaN in a leaf routed to another optimizer skipped nothing (that
    optimizer's update was NaN) and did not raise: ``partition`` shows each transform only its
    leaves. The step is now whole: every state kept, the update zero, the skip counted once;
    ``"raise"`` raises for either leaf."""
    P = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    G = {"w": jnp.full((4, 3), 0.3), "b": jnp.full(3, 0.2)}
    G[bad] = G[bad].at[0].set(jnp.nan)
    opt = spectral_kron(1e-2, nonfinite="skip", others={"other": optax.adamw(1e-3)})
    state = opt.init(P)
    u, new = jax.jit(opt.update)(G, state, P)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
    (old_s,), (new_s,) = _spectral_states(state), _spectral_states(new)
    assert int(new_s.skipped) == int(old_s.skipped) + 1
    for a, b in zip(
        jax.tree.leaves(new_s._replace(skipped=0)), jax.tree.leaves(old_s._replace(skipped=0))
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(
        jax.tree.leaves(new.inner_states["other"]), jax.tree.leaves(state.inner_states["other"])
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    raising = spectral_kron(1e-2, others={"other": optax.adamw(1e-3)})
    with pytest.raises(Exception, match="NaN or inf"):
        jax.jit(raising.update)(G, raising.init(P), P)
        jax.effects_barrier()


def test_validate_state_checks_skipped() -> None:
    """``validate_state`` let a negative ``skipped`` counter through."""
    from spectral_curv.optax import validate_state

    P = {"w": jnp.ones((4, 3))}
    st = scale_by_spectral_kron().init(P)
    validate_state(st, P)
    with pytest.raises(ValueError, match="`skipped`"):
        validate_state(st._replace(skipped=jnp.asarray(-4, jnp.int32)), P)


def test_nonfinite_is_validated_with_others() -> None:
    """With ``others`` the policy is applied outside the partition and was not checked: a
    typo such as ``"Raise"`` silently skipped instead of raising."""
    with pytest.raises(ValueError, match="`nonfinite`"):
        spectral_kron(1e-2, others={"other": optax.adamw(1e-3)}, nonfinite="Raise")


@pytest.mark.parametrize("graft", [None, "adam"])
def test_python_float_leaf_is_a_parameter_as_in_optax(graft):
    """A Python float leaf is a 0-d parameter, as for optax's own optimizers (``init`` failed
    with ``AttributeError: 'float' object has no attribute 'shape'``)."""
    params = {"w": jnp.ones((3, 2)), "s": 1.0}
    grads = {"w": jnp.ones((3, 2)), "s": 0.5}
    ref_params = {"w": jnp.ones((3, 2)), "s": jnp.asarray(1.0)}
    tx = spectral_kron(1e-2, graft=graft)
    u, _ = tx.update(grads, tx.init(params), params)
    v, _ = tx.update({"w": grads["w"], "s": jnp.asarray(0.5)}, tx.init(ref_params), ref_params)
    assert jnp.shape(u["s"]) == () and float(u["s"]) < 0
    np.testing.assert_array_equal(np.asarray(u["s"]), np.asarray(v["s"]))
    np.testing.assert_array_equal(np.asarray(u["w"]), np.asarray(v["w"]))


def test_validate_state_takes_the_whole_optimizer_state_with_others():
    """``validate_state`` finds the spectral state inside ``spectral_kron``'s state (with
    ``others``: leaves routed elsewhere are masked there and skipped); it used to accept
    only the inner ``ScaleBySpectralKronState``, which ``others`` hides in a partition."""
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3), "emb": jnp.ones((5, 2))}
    labels = {"w": "spectral", "b": "spectral", "emb": "other"}
    tx = spectral_kron(1e-2, others={"other": optax.adamw(1e-3)}, label_fn=lambda p: labels)
    _, state = tx.update(params, tx.init(params), params)
    validate_state(state, params)
    inner = [
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ScaleBySpectralKronState))
        if isinstance(x, ScaleBySpectralKronState)
    ]
    assert len(inner) == 1 and isinstance(inner[0].precond["emb"], optax.MaskedNode)
    bad_w = inner[0].precond["w"]._replace(d_C=-jnp.ones(4))
    bad = jax.tree.map(
        lambda x: (
            x._replace(precond={**x.precond, "w": bad_w})
            if isinstance(x, ScaleBySpectralKronState)
            else x
        ),
        state,
        is_leaf=lambda x: isinstance(x, ScaleBySpectralKronState),
    )
    with pytest.raises(ValueError, match=r"\['w'\]: `d_C` must be > 0"):
        validate_state(bad, params)
    with pytest.raises(ValueError, match="holding 0"):
        validate_state(optax.adam(1e-3).init(params), params)


def test_validate_state_names_max_precond_dim():
    params = {"w": jnp.ones((5, 2))}
    state = scale_by_spectral_kron(max_precond_dim=3).init(params)
    with pytest.raises(ValueError, match="another `max_precond_dim`"):
        validate_state(state, params)
    validate_state(state, params, max_precond_dim=3)


def test_validate_state_does_not_let_a_masked_field_hide_a_spectral_leaf():
    """A spectral leaf whose factors were replaced by ``optax.MaskedNode`` passed (a leaf
    routed elsewhere is masked in every field, this one in one); ``update`` then failed
    (found by a review)."""
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    state = scale_by_spectral_kron().init(params)
    bad = state._replace(precond={**state.precond, "w": optax.MaskedNode()})
    with pytest.raises(ValueError, match=r"\['w'\]: masked in some"):
        validate_state(bad, params)


def test_python_float_leaves_through_validate_state_and_heavy_ball():
    """Python float leaves: ``validate_state`` and ``heavy_ball``'s update failed with an
    ``AttributeError`` (``init`` took them; found by a review)."""
    from spectral_curv.optax import heavy_ball

    params = {"w": jnp.ones((4, 3)), "s": 1.5}
    tx = spectral_kron(1e-2)
    _, state = tx.update({"w": jnp.ones((4, 3)), "s": 0.5}, tx.init(params), params)
    validate_state(state, params)
    hb = heavy_ball(0.9)
    u, _ = hb.update({"w": jnp.ones((4, 3)), "s": 0.5}, hb.init(params))
    assert float(u["s"]) == 0.5
