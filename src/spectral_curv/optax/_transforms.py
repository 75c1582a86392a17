"""The small transforms :func:`~spectral_curv.optax.spectral_kron` chains after the
preconditioner: RMS clipping, heavy-ball momentum (the engine's ``optim.clip_rms`` and
``optim.add_momentum``, math §4.7), weight decay and the whole-step skip on a non-finite
gradient; and the preconditioner's differentiable direction (math §3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .. import optim
from ._options import cast_hyperparam, floating_dtype


class ClipByUpdateRmsState(NamedTuple):
    """:func:`clip_by_update_rms` is stateless.

    Example::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import ClipByUpdateRmsState, clip_by_update_rms
        >>> state = clip_by_update_rms(1.0).init({"w": jnp.zeros(3)})
        >>> state == ClipByUpdateRmsState(), len(state)
        (True, 0)
    """


class MomentumState(NamedTuple):
    """Heavy-ball buffer of :func:`heavy_ball` (per leaf, in ``mu_dtype``).

    Example (zeros shaped like the parameters)::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import heavy_ball
        >>> state = heavy_ball(0.9, mu_dtype=jnp.float32).init({"w": jnp.ones((2, 3))})
        >>> type(state).__name__, state.momentum["w"].shape, float(state.momentum["w"].sum())
        ('MomentumState', (2, 3), 0.0)
    """

    momentum: Any


def clip_by_update_rms(max_rms: Any) -> optax.GradientTransformation:
    """Cap each update leaf's RMS at ``max_rms`` (``optim.clip_rms``; stateless).

    Example (an RMS of 3 is scaled down to 1; an RMS under the cap passes unchanged)::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import clip_by_update_rms
        >>> tx = clip_by_update_rms(1.0)
        >>> updates = {"big": jnp.full((2, 2), 3.0), "small": jnp.full(2, 0.5)}
        >>> out, _ = tx.update(updates, tx.init(updates))
        >>> out["big"].tolist(), out["small"].tolist()
        ([[1.0, 1.0], [1.0, 1.0]], [0.5, 0.5])
    """
    if max_rms is None:
        raise ValueError("`max_update_rms` must be finite and > 0, got None")
    optim.check_options({"max_update_rms": max_rms})

    def init_fn(params: Any) -> ClipByUpdateRmsState:
        del params
        return ClipByUpdateRmsState()

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        clip = lambda u: optim.clip_rms(u, cast_hyperparam(max_rms, u.dtype))  # noqa: E731
        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def heavy_ball(
    momentum: Any, mu_dtype: Any = None, *, nesterov: bool = False
) -> optax.GradientTransformation:
    """Undampened momentum ``m ← μ m + U``, output ``m``, or with ``nesterov`` the look-ahead
    ``U + μm`` (``optim.momentum_step``, as ``optim.update_param``; math §4.7).

    The buffer is kept in ``mu_dtype`` (default: each update leaf's dtype; the torch
    optimizer keeps it in ``precond_dtype``, so pass ``jnp.float32`` for bf16 parameters
    to match it); the output has the incoming update's dtype.

    Example (two unit updates: ``m = 1``, then ``0.9·1 + 1 = 1.9``)::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import heavy_ball
        >>> tx, u = heavy_ball(0.9), {"w": jnp.ones(2)}
        >>> out1, state = tx.update(u, tx.init(u))
        >>> out2, state = tx.update(u, state)
        >>> out1["w"].tolist(), [round(float(x), 5) for x in out2["w"]]
        ([1.0, 1.0], [1.9, 1.9])
        >>> tx = heavy_ball(0.9, nesterov=True)  # U + μm: 1 + 0.9·1, then 1 + 0.9·1.9
        >>> out1, state = tx.update(u, tx.init(u))
        >>> out2, state = tx.update(u, state)
        >>> [round(float(x), 5) for x in out1["w"]], [round(float(x), 5) for x in out2["w"]]
        ([1.9, 1.9], [2.71, 2.71])
    """
    if not isinstance(nesterov, bool):
        raise ValueError(f"`nesterov` must be True or False, got {nesterov!r}")
    mdt = floating_dtype("mu_dtype", mu_dtype, allow_none=True)

    def init_fn(params: Any) -> MomentumState:
        return MomentumState(
            jax.tree.map(
                lambda x: jnp.zeros(jnp.shape(x), jnp.result_type(x) if mdt is None else mdt),
                params,
            )
        )

    def update_fn(updates: Any, state: MomentumState, params: Any = None) -> tuple[Any, Any]:
        del params
        updates = jax.tree.map(jnp.asarray, updates)  # a Python float leaf, as in init

        def step(u: Any, b: Any) -> tuple[Any, Any]:
            mu = cast_hyperparam(momentum, b.dtype)
            m, v = optim.momentum_step(b, u.astype(b.dtype), mu, nesterov=nesterov)
            return m.astype(b.dtype), v.astype(u.dtype)

        leaves, treedef = jax.tree.flatten(updates)
        pairs = [step(u, b) for u, b in zip(leaves, treedef.flatten_up_to(state.momentum))]
        bufs = treedef.unflatten([m for m, _ in pairs])
        return treedef.unflatten([v for _, v in pairs]), MomentumState(bufs)

    return optax.GradientTransformation(init_fn, update_fn)


def differentiable_direction(u: Any, st: optim.Precond, g: Any, p: Any, norm_p: Any) -> Any:
    """``u``, the engine's direction of the stop-gradient ``g``, with the derivatives of
    ``optim.direction(st, g, p=p)`` (in ``g``: ``S^{-1/p}``; in the state and an array ``p``
    as well), so that a step is differentiable (meta-gradients) without forming the
    direction twice: the JVP rule runs only under differentiation (math §3)."""
    static_p = not isinstance(p, jax.Array)

    def direction(st: optim.Precond, g: Any, *pp: Any) -> Any:
        return optim.direction(st, g, p=p if static_p else pp[0], norm_p=norm_p)

    @jax.custom_jvp
    def through(u: Any, st: optim.Precond, g: Any, *pp: Any) -> Any:
        return u

    @through.defjvp
    def through_jvp(primals: tuple, tangents: tuple) -> tuple[Any, Any]:
        u, st, g, *pp = primals
        _, st_dot, g_dot, *pp_dot = tangents
        return u, jax.jvp(direction, (st, g, *pp), (st_dot, g_dot, *pp_dot))[1]

    return through(u, st, g, *([] if static_p else [p]))


def add_decayed_weights(weight_decay: Any) -> optax.GradientTransformation:
    """``optax.add_decayed_weights(weight_decay)`` (its state, so checkpoints keep their
    structure) that also takes ``params=None`` when ``weight_decay`` is a Python 0, the
    default: there is nothing to decay, so the update need not see the parameters (as
    ``optax.adam``'s does not)."""
    tx = optax.add_decayed_weights(weight_decay)

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        if params is None and isinstance(weight_decay, (int, float)) and weight_decay == 0:
            return updates, state
        return tx.update(updates, state, params)

    return optax.GradientTransformation(tx.init, update_fn)


def skip_nonfinite(
    tx: optax.GradientTransformation,
    *,
    self_skipping: type,
    on_bad: Callable[[Any], None] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``tx`` whose every state is kept (and update zeroed) on a non-finite gradient in any
    leaf; a state of type ``self_skipping`` (the preconditioner's) counts the skip in its
    ``skipped`` field. ``on_bad(flag)`` (e.g. a host-side raise) gets the "not finite" flag
    first."""
    own = lambda x: isinstance(x, self_skipping)  # noqa: E731

    def update_fn(updates: Any, state: Any, params: Any = None, **extra: Any) -> tuple[Any, Any]:
        ok = optim.all_grads_finite(jnp, jax.tree.leaves(updates))
        if on_bad is not None:
            on_bad(~ok)
        new_u, new_s = tx.update(updates, state, params, **extra)

        def keep(n: Any, o: Any) -> Any:
            kept = jax.tree.map(lambda a, b: jnp.where(ok, a, b), n, o)
            if not own(n):
                return kept
            return kept._replace(skipped=jnp.where(ok, n.skipped, o.skipped + 1))

        new_s = jax.tree.map(keep, new_s, state, is_leaf=own)
        return jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_u), new_s

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)
