"""Optax adapter: :func:`scale_by_spectral_kron` and the full optimizer :func:`spectral_kron`.

The math is the core's (math §3 diagonal scheme, §4 Kronecker scheme, §5 damping, ties and
the normalised factor step), reached through :mod:`spectral_curv.optim`; this module owns
only the optax state pytree, parameter routing and jit-safe control flow (``lax.cond`` for
the first step, the refresh and the re-orthonormalisation). The semantics are those of
:class:`spectral_curv.torch.SpectralKron` (same defaults, same step order), so both give
the same trajectory to round-off:

- leaves of order ≥ 2: Kronecker factors on ``(shape[0], prod(shape[1:]))`` (math §4), a
  side longer than ``max_precond_dim`` kept diagonal;
- leaves of order ≤ 1 (biases, scalars): the diagonal scheme (math §3).

Usage::

    >>> import jax, jax.numpy as jnp, optax
    >>> from spectral_curv.optax import spectral_kron
    >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    >>> opt = spectral_kron(learning_rate=1e-2)
    >>> state = opt.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = jax.jit(opt.update)(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

The preconditioner alone chains with any optax transform::

    optax.chain(scale_by_spectral_kron(0.1), optax.add_decayed_weights(1e-4),
                optax.scale_by_learning_rate(1e-3))

``optax.inject_hyperparams(spectral_kron)(learning_rate=..., precond_lr=..., momentum=...,
weight_decay=...)`` works under ``jax.jit``: every float hyperparameter and
``update_interval``/``precond_warmup`` may be traced. ``max_precond_dim`` decides the
state's structure, so ``init`` must then run eagerly (not under ``jit``) or the name be in
``static_args``; the same holds for ``cayley_terms`` with ``cayley="neumann"``. A callable
``label_fn`` and a dtype given as a scalar type (``jnp.bfloat16``) look like schedules to
``inject_hyperparams``: list them in ``static_args`` too (or pass ``jnp.dtype(...)``).
:data:`STATIC_ARGS` names all of these.
"""

from __future__ import annotations

# In reading order, which the API page follows: the preconditioner, its checkpoint check,
# the transforms chained after it, the optimizer.
# isort: off
from ._scale import ScaleBySpectralKronState, scale_by_spectral_kron
from ._checkpoint import validate_state
from ._transforms import ClipByUpdateRmsState, MomentumState, clip_by_update_rms, heavy_ball
from ._alias import SPECTRAL, STATIC_ARGS, order_labels, spectral_kron

# isort: on

__all__ = [
    "SPECTRAL",
    "STATIC_ARGS",
    "ClipByUpdateRmsState",
    "MomentumState",
    "ScaleBySpectralKronState",
    "clip_by_update_rms",
    "heavy_ball",
    "order_labels",
    "scale_by_spectral_kron",
    "spectral_kron",
    "validate_state",
]
