"""Cross-framework consistency (issue: adapters): torch, optax and NumPy optimizers and a plain
loop over the functional core give the same 50-step float64 trajectory to 1e-10 relative.

Every optimizer sees the same gradients: a hand-written NumPy backprop of a small MLP with an
order-3 weight (flattened Kronecker), a weight with a diagonal side (``max_precond_dim``),
two same-shaped matrices (stacked refreshes) and biases (diagonal scheme), evaluated at that
optimizer's own current parameters. So any difference is the optimizer's, not autodiff's.
The core loop calls ``spectral_curv.optim`` (hence ``kron``/``diag``) one parameter at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from spectral_curv import numpy as sc_numpy
from spectral_curv import optim

STEPS = 50
RTOL = 1e-10
SHAPES = {"W1": (6, 2, 3), "b1": (6,), "W2": (6, 6), "W3": (6, 6), "W4": (2, 6), "b4": (2,)}

CONFIGS = {
    "defaults": {"lr": 0.02, "precond_warmup": 4, "update_interval": 3, "reorth_interval": 2},
    "exact-p1-graft-clip": {
        "lr": 0.01,
        "p": 1.0,
        "cayley": "exact",
        "exp": "exact",
        "graft": "adam",
        "max_update_rms": 0.4,
        "weight_decay": 0.05,
        "momentum": 0.5,
        "damping": 1e-4,
        "update_interval": 2,
        "precond_warmup": 2,
        "max_precond_dim": 5,
    },
    "neumann2-gamma0": {
        "lr": 0.01,
        "gamma": 0.0,
        "cayley": "neumann",
        "cayley_terms": 2,
        "precond_lr": 0.05,
        "momentum": 0.0,
        "update_interval": 1,
        "reorth_interval": 3,
    },
    "corrected-eigenvalues-p3": {
        "lr": 0.02,
        "p": 3.0,
        "eigenvalues": "corrected",
        "precond_warmup": 4,
        "update_interval": 2,
        "max_precond_dim": 5,
    },
}
# The optimizers' defaults (one definition: optim.Options); the dtype is set per test.
DEFAULTS: dict[str, Any] = {
    k: v for k, v in optim.Options().as_dict().items() if k not in ("precond_dtype", "nonfinite")
}


def _problem() -> tuple[dict[str, np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(7)
    params = {k: rng.standard_normal(s) * (0.4 if len(s) > 1 else 0.1) for k, s in SHAPES.items()}
    X = rng.standard_normal((128, 6))
    Y = np.stack([np.sin(X[:, 0] + X[:, 1]), X[:, 2] * X[:, 3]], axis=1)
    batches = []
    for _ in range(STEPS):
        idx = rng.choice(128, 32, replace=False)
        batches.append((X[idx], Y[idx]))
    return params, batches


def _grads(P: dict[str, np.ndarray], batch: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """Backprop of ``0.5 mean ‖W4 t3 + b4 − Y‖²`` with ``t1 = tanh(W1·x + b1)`` (W1 read as
    6×6), ``t2 = tanh(W2 t1)``, ``t3 = tanh(W3 t2)``."""
    X, Y = batch
    n = len(X)
    w1 = P["W1"].reshape(6, 6)
    h1 = np.tanh(X @ w1.T + P["b1"])
    h2 = np.tanh(h1 @ P["W2"].T)
    h3 = np.tanh(h2 @ P["W3"].T)
    out = h3 @ P["W4"].T + P["b4"]
    e = (out - Y) / n
    g = {"W4": e.T @ h3, "b4": e.sum(0)}
    d3 = (e @ P["W4"]) * (1 - h3**2)
    g["W3"] = d3.T @ h2
    d2 = (d3 @ P["W3"]) * (1 - h2**2)
    g["W2"] = d2.T @ h1
    d1 = (d2 @ P["W2"]) * (1 - h1**2)
    g["W1"] = (d1.T @ X).reshape(SHAPES["W1"])
    g["b1"] = d1.sum(0)
    return g


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# --------------------------------------------------------------------------- the routes


def _core(hp: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """A plain loop over ``spectral_curv.optim``, one parameter at a time (no stacking)."""
    P, batches = _problem()
    P = {k: v.copy() for k, v in P.items()}
    st: dict[str, Any] = {}
    for k, v in P.items():
        pl = optim.plan(v.shape, hp["max_precond_dim"])
        st[k] = {
            "plan": pl,
            "pre": optim.init(
                pl,
                optim.matrix_shape(pl, v.shape),
                eigenvalues=hp["eigenvalues"],
                xp=optim.namespace(v),
            ),
            "m": np.zeros_like(v),
            "ea": np.zeros_like(v),
            "eas": np.zeros_like(v),
            "refreshes": 0,
        }
    traj = []
    for t, batch in enumerate(batches):
        G = _grads(P, batch)
        for k in P:
            s = st[k]
            g = G[k].reshape(optim.matrix_shape(s["plan"], G[k].shape))
            first, refresh, reorth = optim.schedule(
                t,
                s["refreshes"],
                update_interval=hp["update_interval"],
                precond_warmup=hp["precond_warmup"],
                reorth_interval=hp["reorth_interval"],
                cayley=hp["cayley"],
            )
            if first:
                s["pre"] = optim.first_state(s["pre"], g, damping=hp["damping"])
            before = s["pre"]
            if refresh:
                s["pre"], _ = optim.refresh(
                    s["pre"],
                    g,
                    precond_lr=hp["precond_lr"],
                    gamma=hp["gamma"],
                    damping=hp["damping"],
                    cayley=hp["cayley"],
                    exp=hp["exp"],
                    cayley_terms=hp["cayley_terms"],
                )
                s["refreshes"] += 1
                if reorth:
                    s["pre"] = optim.reorthonormalize(s["pre"])
            norm_p = 2.0 if hp.get("step_scale", "p2") == "p2" else None
            # corrected eigenvalues step in the basis before the refresh (math §4.10)
            corrected = getattr(before, "V", None) is not None
            step_st = before._replace(V=s["pre"].V) if corrected else s["pre"]
            u = optim.direction(step_st, g, p=hp["p"], norm_p=norm_p).reshape(P[k].shape)
            if hp["graft"] == "adam":
                u, s["ea"], s["eas"] = optim.graft_adam(
                    u,
                    G[k],
                    s["ea"],
                    s["eas"],
                    step=t + 1,
                    betas=hp["graft_betas"],
                    eps=hp["graft_eps"],
                )
            if hp["max_update_rms"] is not None:
                u = optim.clip_rms(u, hp["max_update_rms"])
            if hp["momentum"]:
                u = s["m"] = optim.add_momentum(s["m"], u, hp["momentum"])
            P[k] = optim.apply_update(P[k], u, lr=hp["lr"], weight_decay=hp["weight_decay"])
        traj.append({k: v.copy() for k, v in P.items()})
    return traj


def _numpy(hp: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    P, batches = _problem()
    opt = sc_numpy.SpectralKron(P, **hp)
    traj = []
    for batch in batches:
        P = opt.step(P, _grads(P, batch))
        traj.append({k: np.array(v) for k, v in P.items()})
    return traj


def _torch(hp: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    torch = pytest.importorskip("torch")
    from spectral_curv.torch import SpectralKron

    P, batches = _problem()
    tp = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in P.items()}
    opt = SpectralKron(list(tp.values()), **hp, precond_dtype=torch.float64)
    traj = []
    for batch in batches:
        G = _grads({k: v.detach().numpy() for k, v in tp.items()}, batch)
        for k, v in tp.items():
            v.grad = torch.tensor(G[k])
        opt.step()
        traj.append({k: v.detach().numpy().copy() for k, v in tp.items()})
    return traj


def _optax(hp: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    import optax

    from spectral_curv.optax import spectral_kron

    kw = {k: v for k, v in hp.items() if k != "lr"}
    P, batches = _problem()
    traj = []
    with jax.enable_x64(True):
        tx = spectral_kron(hp["lr"], **kw, precond_dtype=jnp.dtype("float64"))
        jp = {k: jnp.asarray(v) for k, v in P.items()}
        state = tx.init(jp)
        update = jax.jit(tx.update)
        for batch in batches:
            G = _grads({k: np.asarray(v) for k, v in jp.items()}, batch)
            upd, state = update({k: jnp.asarray(v) for k, v in G.items()}, state, jp)
            jp = optax.apply_updates(jp, upd)
            traj.append({k: np.asarray(v) for k, v in jp.items()})
    return traj


@pytest.fixture(scope="module", params=list(CONFIGS))
def reference(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    hp = {**DEFAULTS, **CONFIGS[request.param]}
    return hp, _core(hp)


@pytest.mark.slow  # the quick loop has tests/test_contract.py's cross-adapter trajectories
@pytest.mark.parametrize("route", ["numpy", "torch", "optax"])
def test_same_trajectory_as_the_functional_core(reference, route, record_property):
    hp, ref = reference
    got = {"numpy": _numpy, "torch": _torch, "optax": _optax}[route](hp)
    assert len(got) == STEPS
    worst = 0.0
    for t, (a, b) in enumerate(zip(got, ref)):
        for k in SHAPES:
            err = _rel(a[k], b[k])
            worst = max(worst, err)
            assert err <= RTOL, f"{route}: step {t}, {k}: relative error {err:.3e}"
    record_property(f"max_rel_err_{route}", worst)
    # the run moved the parameters (the comparison is not of untouched arrays)
    p0, _ = _problem()
    assert min(_rel(ref[-1][k], p0[k]) for k in SHAPES) > 1e-3
