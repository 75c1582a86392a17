"""NumPy adapter: :class:`SpectralKron`, a plain optimizer over a dict or list of arrays.

The math is the core's (math §3 diagonal scheme, §4 Kronecker scheme, §5 damping), reached
only through :mod:`spectral_curv.optim` (schedule, first-step scale, keep-last-good refresh,
re-orthonormalisation, direction, grafting, clipping, momentum, decoupled weight decay);
this package owns storage, routing and control flow, and reproduces
:class:`spectral_curv.torch.SpectralKron` step for step (same options, defaults, schedule,
per-parameter counters, bucketing of same-shaped layers into one batched refresh, and
non-finite policy):

- order ≥ 2: Kronecker ``α S_C ⊗ S_K`` on ``(shape[0], prod(shape[1:]))`` (math §4), a side
  longer than ``max_precond_dim`` kept diagonal;
- order ≤ 1 (biases, scalars) and empty arrays: the diagonal scheme (math §3).

The optimizer is functional in its parameters: :meth:`SpectralKron.step` takes the
parameters and their gradients (same container: a ``dict`` of name → array, or a list) and
returns new parameters in that container; the inputs are never mutated. The optimizer keeps
only its own state, which :meth:`SpectralKron.state_dict` exports as NumPy arrays plus plain
Python values (``np.savez`` + ``json``, no pickle) and :meth:`SpectralKron.load_state_dict`
validates and restores bit for bit.

Example::

    >>> import numpy as np
    >>> from spectral_curv.numpy import SpectralKron
    >>> params = {"w": np.zeros((4, 3)), "b": np.zeros(3)}
    >>> opt = SpectralKron(params, lr=1e-2)
    >>> grads = {"w": np.ones((4, 3)), "b": np.ones(3)}
    >>> params = opt.step(params, grads)
    >>> sorted(params), params["w"].dtype, opt.steps
    (['b', 'w'], dtype('float64'), {'w': 1, 'b': 1})
    >>> resumed = SpectralKron({"w": np.zeros((4, 3)), "b": np.zeros(3)})
    >>> resumed.load_state_dict(opt.state_dict())
    >>> resumed.steps["w"], resumed.options["lr"]
    (1, 0.01)
"""

from __future__ import annotations

from ._checkpoint import FORMAT
from ._optimizer import SpectralKron

__all__ = ["FORMAT", "SpectralKron"]
