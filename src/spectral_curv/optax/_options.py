"""Option handling the optax transforms share: defaults, names, dtypes, traced values.

The options, their defaults and their validation are ``optim.Options`` (math §3–§5); this
module adds only what JAX needs on top: dtypes given as JAX types, hyperparameters that
``optax.inject_hyperparams`` hands over as (possibly traced) arrays, and the deprecated
grafting names of a signature that spells out every option.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import optim

#: The defaults of every option (``optim.Options``: one name and one default everywhere).
DEFAULTS = optim.Options()

#: The options of :func:`~spectral_curv.optax.scale_by_spectral_kron`: all of
#: ``optim.Options`` but those of the rest of the optimizer (it only preconditions).
REST = ("lr", "momentum", "nesterov", "weight_decay", "max_update_rms")
PRECOND_OPTIONS = tuple(n for n in optim.Options.names() if n not in REST)


def floating_dtype(name: str, v: Any, allow_none: bool = False) -> Any:
    """``v`` as a ``jnp.dtype`` (None passes with ``allow_none``); a ValueError naming the
    option unless it is a floating dtype."""
    if v is None and allow_none:
        return None
    try:
        dt = jnp.dtype(v)
    except TypeError as e:
        raise ValueError(f"`{name}` must be a floating dtype, got {v!r}") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"`{name}` must be a floating dtype, got {v!r}")
    return dt


def static_int(v: Any) -> int | None:
    """``v`` as a Python int, or None when it is a traced array (value unknown at trace time)."""
    try:
        return int(v)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return None


def static_if_known(v: Any) -> Any:
    """``v`` as a Python int when its value is known, else ``v`` (a traced integer)."""
    r = static_int(v)
    return r if r is not None else v


def cast_hyperparam(v: Any, dtype: Any) -> Any:
    """A hyperparameter in the computation's dtype: arrays (e.g. from ``inject_hyperparams``,
    cast to the params' dtype there) are cast, Python numbers stay weakly typed."""
    if isinstance(v, (jax.Array, np.ndarray)):
        return jnp.asarray(v, dtype=dtype)
    return v


def graft_constants(betas: Any, eps: Any, graft_betas: Any, graft_eps: Any) -> tuple[Any, Any]:
    """The graft constants, taking the deprecated ``betas``/``eps`` (``optim.renamed``, which
    warns at the caller of the transform); a TypeError when a constant is given twice."""
    old = {k: v for k, v in (("betas", betas), ("eps", eps)) if v is not None}
    given = {
        "graft_betas": graft_betas != DEFAULTS.graft_betas,
        "graft_eps": graft_eps != DEFAULTS.graft_eps,
    }
    for name, new_name in optim.DEPRECATED_NAMES.items():
        if name in old and given[new_name]:
            raise TypeError(f"got both `{name}` (deprecated) and `{new_name}`")
    new = optim.renamed(old, stacklevel=4)
    return new.get("graft_betas", graft_betas), new.get("graft_eps", graft_eps)
