"""``spectral_curv.optax.spectral_kron`` with parameters sharded over a 4-device CPU mesh.

Runs in a subprocess (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, the flag must
be set before JAX starts). A small MLP is trained under ``jax.jit`` with the rows of every
weight sharded over the mesh (``NamedSharding(mesh, P("x", None))``, biases replicated) and
compared with the unsharded single-device run, in float64 (``jax_enable_x64``): sharding
changes the reduction order of the contractions, so the runs agree to round-off, not
bitwise. Tolerance, per leaf, relative to the leaf's max-abs: 1e-9 for the parameters
(observed ~5e-13) and 1e-8 for the optimizer state (observed ~1.5e-10: the eigenbasis
factors amplify round-off where eigenvalues are close).
The optimizer state's shardings after every step equal those after step 1 (no drift).
Checkpoint/resume: params and the optimizer-state pytree saved after 5 sharded steps as
plain arrays (``np.savez``), restored into a fresh template's shardings, continued to
step 10: bitwise equal to the uninterrupted sharded run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

pytestmark = pytest.mark.slow  # one 4-device subprocess run shared by the module (~25 s)

SCRIPT = r"""
import json
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from spectral_curv.optax import spectral_kron

jax.config.update("jax_enable_x64", True)
assert jax.device_count() == 4, jax.devices()
STEPS = 10

def init_params():
    rng = np.random.default_rng(0)
    sizes = [(16, 32), (32, 32), (32, 8)]
    p = {}
    for i, (a, b) in enumerate(sizes):
        p[f"w{i}"] = jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a))
        p[f"b{i}"] = jnp.zeros(b)
    return p

def batch(step):
    rng = np.random.default_rng(100 + step)
    return jnp.asarray(rng.normal(size=(24, 16))), jnp.asarray(rng.normal(size=(24, 8)))

def loss_fn(p, x, y):
    h = x
    for i in range(3):
        h = h @ p[f"w{i}"] + p[f"b{i}"]
        if i < 2:
            h = jnp.tanh(h)
    return jnp.mean((h - y) ** 2)

opt = spectral_kron(1e-2, precond_lr=0.1, precond_warmup=3, update_interval=2,
                    weight_decay=1e-3, graft="adam", precond_dtype=jnp.float64)

@jax.jit
def train_step(p, s, x, y):
    loss, g = jax.value_and_grad(loss_fn)(p, x, y)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

def shardings(tree):
    return [leaf.sharding for leaf in jax.tree.leaves(tree)]

def run(place):
    p = place(init_params())
    s = jax.jit(opt.init)(p)
    first_p = first_s = None
    drift = []
    losses = []
    for step in range(STEPS):
        x, y = batch(step)
        p, s, loss = train_step(p, s, x, y)
        losses.append(float(loss))
        if step == 0:
            first_p, first_s = shardings(p), shardings(s)
        else:
            drift.append(shardings(p) != first_p or shardings(s) != first_s)
    return p, s, losses, drift

mesh = Mesh(np.array(jax.devices()), ("x",))
rows = NamedSharding(mesh, P("x", None))
repl = NamedSharding(mesh, P())

def shard(p):
    return {k: jax.device_put(v, rows if v.ndim == 2 else repl) for k, v in p.items()}

def single(p):
    return jax.device_put(p, jax.devices()[0])

def resumed(place, split, path):
    # run `split` steps, save params + optimizer state as plain arrays (np.savez, no
    # pickle), restore them into a fresh template's shardings, run the remaining steps
    p = place(init_params())
    s = jax.jit(opt.init)(p)
    for step in range(split):
        p, s, _ = train_step(p, s, *batch(step))
    leaves = jax.tree.leaves((p, s))
    before = [(leaf.sharding, leaf.ndim) for leaf in leaves]
    np.savez(path, *[np.asarray(leaf) for leaf in leaves])
    del p, s
    # restore into the shardings the compiled training step gives its outputs (what the
    # state has after every step), taken from a fresh template
    tp = place(init_params())
    ts = jax.jit(opt.init)(tp)
    t_leaves, treedef = jax.tree.flatten((tp, ts))
    out_sh = train_step.lower(tp, ts, *batch(0)).compile().output_shardings
    where = jax.tree.leaves((out_sh[0], out_sh[1]), is_leaf=lambda x: hasattr(x, "device_set"))
    assert len(where) == len(t_leaves)
    with np.load(path, allow_pickle=False) as f:
        saved = [f[f"arr_{i}"] for i in range(len(t_leaves))]
    p, s = jax.tree.unflatten(treedef, [jax.device_put(a, w) for a, w in zip(saved, where)])
    same_shardings = all(
        leaf.sharding.is_equivalent_to(sh, nd)
        for leaf, (sh, nd) in zip(jax.tree.leaves((p, s)), before)
    )
    for step in range(split, STEPS):
        p, s, _ = train_step(p, s, *batch(step))
    return p, s, same_shardings

p1, s1, l1, d1 = run(single)
p4, s4, l4, d4 = run(shard)
import tempfile, os
with tempfile.TemporaryDirectory() as tmp:
    pr, sr, same_sh = resumed(shard, 5, os.path.join(tmp, "ckpt.npz"))
resume_equal = all(
    bool(np.array_equal(np.asarray(a), np.asarray(b)))
    for a, b in zip(jax.tree.leaves((p4, s4)), jax.tree.leaves((pr, sr)))
)
diff = max(float(jnp.max(jnp.abs(np.asarray(a) - np.asarray(b))))
           for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)))
def rel(a, b):  # per leaf, max |a - b| relative to the leaf's scale
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)) if a.size else 0.0
rel_params = max(rel(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)))
rel_state = max(rel(a, b) for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s4)))
print(json.dumps({
    "dtype": str(p4["w0"].dtype),
    "max_abs_diff_params": diff,
    "rel_params": rel_params,
    "rel_state": rel_state,
    "loss_single": l1,
    "loss_sharded": l4,
    "drift_single": any(d1),
    "drift_sharded": any(d4),
    "param_specs": {k: list(v.sharding.spec) + [None] * (v.ndim - len(v.sharding.spec))
                    for k, v in p4.items()},
    "param_devices": {k: len(v.sharding.device_set) for k, v in p4.items()},
    "state_devices": sorted({len(l.sharding.device_set) for l in jax.tree.leaves(s4)}),
    "resume_equal": resume_equal,
    "resume_same_shardings": same_sh,
}))
"""


@pytest.fixture(scope="module")
def result() -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_matches_unsharded(result: dict) -> None:
    assert result["dtype"] == "float64"
    assert result["rel_params"] < 1e-9, result
    assert result["rel_state"] < 1e-8, result
    assert result["max_abs_diff_params"] < 1e-10
    assert result["loss_sharded"][-1] < result["loss_sharded"][0]  # it trains


def test_params_stay_sharded(result: dict) -> None:
    for k, spec in result["param_specs"].items():
        assert result["param_devices"][k] == 4
        if k.startswith("w"):
            assert spec == ["x", None], (k, spec)


def test_state_shardings_do_not_drift(result: dict) -> None:
    assert not result["drift_sharded"]
    assert not result["drift_single"]
    assert result["state_devices"] == [4]  # the state lives on the mesh, not on one device


def test_checkpoint_resume_is_bitwise(result: dict) -> None:
    assert result["resume_same_shardings"]
    assert result["resume_equal"]
