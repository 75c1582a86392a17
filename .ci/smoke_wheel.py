"""Three optimizer steps with every adapter whose framework is installed (run against an
installed wheel by ``nox -s package``): prints one line per adapter, fails on any error."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np

import spectral_curv
from spectral_curv import kron
from spectral_curv import numpy as sc_numpy

assert "torch" not in sys.modules and "jax" not in sys.modules, "core imported a framework"
rng = np.random.default_rng(0)
W = {"w": rng.standard_normal((8, 4)), "b": np.zeros(8)}

st = kron.init(8, 4)
for _ in range(3):
    st, U = kron.precondition_and_update(st, rng.standard_normal((8, 4)), p=2, beta2=0.1)
assert np.all(np.isfinite(U))
print("core", spectral_curv.__version__, "ok")

opt = sc_numpy.SpectralKron(W, lr=1e-2)
for _ in range(3):
    W = opt.step(W, {k: rng.standard_normal(v.shape) for k, v in W.items()})
print("numpy ok", opt.steps)

if importlib.util.find_spec("torch"):
    import torch

    from spectral_curv.torch import SpectralKron

    model = torch.nn.Linear(4, 3)
    topt = SpectralKron(model.parameters(), lr=1e-2)
    for _ in range(3):
        topt.zero_grad()
        model(torch.randn(16, 4)).square().mean().backward()
        topt.step()
    print("torch ok")

if importlib.util.find_spec("optax"):
    import jax
    import jax.numpy as jnp
    import optax

    from spectral_curv.optax import spectral_kron

    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    tx = spectral_kron(1e-2)
    state = tx.init(params)
    for i in range(3):
        g = jax.tree.map(lambda p, i=i: jnp.full_like(p, 0.1 * (i + 1)), params)
        upd, state = jax.jit(tx.update)(g, state, params)
        params = optax.apply_updates(params, upd)
    print("optax ok")
