""":func:`spectral_kron`, the complete optimizer (as ``optax.adam`` is to
``scale_by_adam``): the preconditioner chained with clipping, momentum, weight decay and
the learning rate (math §4.7), and the routing of leaves to other optimizers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .. import optim
from ._options import DEFAULTS as _D
from ._options import PRECOND_OPTIONS, floating_dtype, graft_constants
from ._scale import ScaleBySpectralKronState, _on_host, _raise_if, scale_by_spectral_kron
from ._transforms import add_decayed_weights, clip_by_update_rms, heavy_ball, skip_nonfinite

#: The label :func:`spectral_kron` routes to the spectral optimizer (see ``others``).
SPECTRAL = "spectral"

#: Arguments of :func:`spectral_kron` to pass as ``static_args`` to
#: ``optax.inject_hyperparams`` when they are set (or when ``init`` runs under ``jit``).
STATIC_ARGS = (
    "max_precond_dim",
    "reorth_interval",
    "cayley_terms",
    "precond_dtype",
    "mu_dtype",
    "label_fn",
)


def order_labels(params: Any, *, min_order: int = 2, other: str = "other") -> Any:
    """A ``label_fn`` for :func:`spectral_kron`: :data:`SPECTRAL` for leaves of order ≥
    ``min_order``, ``other`` for the rest (e.g. to give biases and norms to AdamW).

    Example::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import order_labels
        >>> params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2), "s": jnp.zeros(())}
        >>> order_labels(params)
        {'b': 'other', 's': 'other', 'w': 'spectral'}
        >>> order_labels(params, min_order=1, other="adam")
        {'b': 'spectral', 's': 'adam', 'w': 'spectral'}
    """
    return jax.tree.map(lambda x: SPECTRAL if jnp.ndim(x) >= min_order else other, params)


def spectral_kron(
    learning_rate: Any,
    precond_lr: Any = _D.precond_lr,
    *,
    p: Any = _D.p,
    gamma: Any = _D.gamma,
    damping: Any = _D.damping,
    momentum: Any = _D.momentum,
    nesterov: bool = _D.nesterov,
    weight_decay: Any = _D.weight_decay,
    update_interval: Any = _D.update_interval,
    precond_warmup: Any = _D.precond_warmup,
    reorth_interval: Any = _D.reorth_interval,
    cayley: str = _D.cayley,
    cayley_terms: Any = _D.cayley_terms,
    exp: str = _D.exp,
    tie_tol: Any = _D.tie_tol,
    max_step_norm: Any = _D.max_step_norm,
    rotation: str = _D.rotation,
    eigenvalues: str = _D.eigenvalues,
    step_scale: str = _D.step_scale,
    max_update_rms: Any = _D.max_update_rms,
    graft: str | None = _D.graft,
    graft_betas: tuple[Any, Any] = _D.graft_betas,
    graft_eps: Any = _D.graft_eps,
    max_precond_dim: Any = _D.max_precond_dim,
    precond_dtype: Any = _D.precond_dtype,
    nonfinite: str = _D.nonfinite,
    mu_dtype: Any = None,
    others: Mapping[str, optax.GradientTransformation] | None = None,
    label_fn: Callable[[Any], Any] | None = None,
    betas: Any = None,
    eps: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """The spectral Kronecker optimizer (Lin et al., ICML 2025), as torch's ``SpectralKron``.

    ``chain(scale_by_spectral_kron(...), clip_by_update_rms(max_update_rms) if set,
    heavy_ball(momentum, mu_dtype, nesterov=nesterov), add_decayed_weights(weight_decay),
    scale_by_learning_rate(learning_rate))``, i.e. per leaf
    ``U = S^{-1/p} G`` (grafted, clipped), ``m ← μm + U``, ``M ← M − lr (v + wd M)`` with
    ``v = m`` (default) or ``v = U + μm`` (``nesterov=True``).
    ``learning_rate`` may be a schedule. Leaves of order ≥ 2 get the Kronecker factors,
    order ≤ 1 the diagonal scheme (the routing of the torch optimizer). A non-finite
    gradient skips the whole step: every state is kept (momentum included) and the update
    is zero; ``nonfinite="raise"`` also raises (see :func:`scale_by_spectral_kron`). With
    ``others`` the step is the whole tree's: a non-finite gradient in any leaf keeps every
    optimizer's state and zeroes every update.
    ``mu_dtype``: the momentum's dtype (default: each leaf's).

    Routing leaves elsewhere: ``others`` maps labels to complete optax optimizers (their
    own learning rate and sign included) and ``label_fn(params)`` returns a pytree of labels;
    leaves labelled :data:`SPECTRAL` get this optimizer, any other label ``L`` gets
    ``others[L]`` (``optax.partition``). With ``others`` and no ``label_fn``,
    :func:`order_labels` is used: order ≥ 2 spectral, the rest ``"other"``, e.g.
    ``spectral_kron(1e-3, others={"other": optax.adamw(1e-3)})``.

    Python-number hyperparameters are validated eagerly (a ValueError names the argument);
    see the module docstring for ``inject_hyperparams`` and :data:`STATIC_ARGS`.

    Example (biases routed to AdamW; the module docstring shows a jitted step)::

        >>> import jax.numpy as jnp, optax
        >>> from spectral_curv.optax import order_labels, spectral_kron
        >>> params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
        >>> order_labels(params)
        {'b': 'other', 'w': 'spectral'}
        >>> opt = spectral_kron(1e-2, others={"other": optax.adamw(1e-3)})
        >>> state = opt.init(params)
        >>> sorted(state.inner_states)
        ['other', 'spectral']
    """
    graft_betas, graft_eps = graft_constants(betas, eps, graft_betas, graft_eps)
    precond = {k: v for k, v in locals().items() if k in PRECOND_OPTIONS}
    optim.check_options(
        {
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "max_update_rms": max_update_rms,
            "momentum": momentum,
            "nesterov": nesterov,
        }
    )
    floating_dtype("mu_dtype", mu_dtype, allow_none=True)
    if nonfinite not in optim.NONFINITE:  # checked here: with `others` it is taken outside
        raise ValueError(f"`nonfinite` must be one of {optim.NONFINITE}, got {nonfinite!r}")
    rest = [] if max_update_rms is None else [clip_by_update_rms(max_update_rms)]
    rest += [
        heavy_ball(momentum, mu_dtype, nesterov=nesterov),
        add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    ]
    if others is None:
        if label_fn is not None:
            raise ValueError("`label_fn` needs `others` (the transforms for its labels)")
        return optax.with_extra_args_support(_chain(precond, rest))
    if not isinstance(others, Mapping) or SPECTRAL in others:
        raise ValueError(
            f"`others` must be a dict of optax transforms without the key {SPECTRAL!r}"
        )
    # the whole step, other optimizers' leaves included: `partition` shows each transform
    # only its own leaves, so the non-finite check and the skip are taken around it (and a
    # "raise" raised there, once, for any leaf)
    tx = _chain({**precond, "nonfinite": "skip"}, rest)
    inner = optax.partition({SPECTRAL: tx, **others}, label_fn or order_labels)
    on_bad = functools.partial(_on_host, _raise_if) if nonfinite == "raise" else None
    return optax.with_extra_args_support(
        skip_nonfinite(inner, self_skipping=ScaleBySpectralKronState, on_bad=on_bad)
    )


def _chain(precond: dict[str, Any], rest: list[Any]) -> optax.GradientTransformation:
    """The spectral chain of :func:`spectral_kron` (a non-finite step kept whole)."""
    tx = optax.chain(scale_by_spectral_kron(**precond), *rest)
    return skip_nonfinite(tx, self_skipping=ScaleBySpectralKronState)
