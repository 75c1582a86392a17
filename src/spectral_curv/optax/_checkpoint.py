""":func:`validate_state`: a restored :class:`~spectral_curv.optax.ScaleBySpectralKronState`
checked against the parameters with the engine's checks (``optim.check_counters``,
``optim.check_precond``, ``optim.check_slots``: math §4's normalisation, orthogonal bases).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import optim
from ._options import DEFAULTS as _D
from ._scale import ScaleBySpectralKronState


def validate_state(
    state: ScaleBySpectralKronState, params: Any, *, max_precond_dim: int = _D.max_precond_dim
) -> None:
    """Raise a ValueError naming the leaf and the field unless ``state`` (e.g. restored from a
    checkpoint) is a valid :func:`scale_by_spectral_kron` state for ``params``.

    ``state`` may also be a whole optimizer's state that holds exactly one such state (e.g.
    :func:`spectral_kron`'s, with or without ``others``); leaves routed to ``others`` (masked
    in it) are skipped. ``max_precond_dim``: the one the state was made with.

    Checks the tree structure, the counters (``0 ≤ rejected ≤ refreshes ≤ count``,
    ``skipped ≥ 0``), and per
    leaf the factors against the leaf's plan (``optim.check_precond``: shapes, finite,
    ``α, d > 0``, ``Π d = 1``, orthogonal ``B``) and the graft moments. Reads values: call
    it eagerly, outside ``jit``.

    Example::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import scale_by_spectral_kron, validate_state
        >>> params = {"w": jnp.zeros((4, 3))}
        >>> state = scale_by_spectral_kron().init(params)
        >>> validate_state(state, params)
        >>> bad = state._replace(precond={"w": state.precond["w"]._replace(d_C=-jnp.ones(4))})
        >>> validate_state(bad, params)
        Traceback (most recent call last):
        ...
        ValueError: state leaf ['w']: `d_C` must be > 0
    """
    if not isinstance(state, ScaleBySpectralKronState):
        mine = ScaleBySpectralKronState
        found = [
            x
            for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, mine))
            if isinstance(x, mine)
        ]
        if len(found) != 1:
            raise ValueError(
                "expected a ScaleBySpectralKronState or an optax state holding exactly one, "
                f"got {type(state)!r} holding {len(found)}"
            )
        state = found[0]
    paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    try:
        precs = treedef.flatten_up_to(state.precond)
        rejs = treedef.flatten_up_to(state.rejected)
    except (ValueError, TypeError) as e:
        raise ValueError(f"state does not match the params' tree structure: {e}") from e
    skipped = np.asarray(state.skipped)
    if skipped.shape != () or skipped.dtype.kind not in "iu" or int(skipped) < 0:
        raise ValueError(f"state `skipped` must be an integer >= 0, got {state.skipped!r}")
    graft = state.exp_avg is not None
    moments = (
        zip(treedef.flatten_up_to(state.exp_avg), treedef.flatten_up_to(state.exp_avg_sq))
        if graft
        else [(None, None)] * len(precs)
    )
    o = optim.Options(graft="adam" if graft else None)
    for (path, x), pre, rej, (ea, eas) in zip(paths, precs, rejs, moments):
        where = f"state leaf {jax.tree_util.keystr(path)}"
        masked = [
            isinstance(v, optax.MaskedNode) for v in (pre, rej, *((ea, eas) if graft else ()))
        ]
        if all(masked):  # a leaf another optimizer steps (`others`, optax.masked)
            continue
        if any(masked):  # a masked field cannot stand in for a missing or corrupted one
            raise ValueError(f"{where}: masked in some of the state's fields only")
        shape = tuple(jnp.shape(x))  # a Python float leaf is a 0-d parameter
        optim.check_counters(state.count, state.refreshes, rej, where=where)
        pl = optim.plan(shape, max_precond_dim)
        optim.check_precond(pre, pl, optim.matrix_shape(pl, shape), where=where)
        slots = optim.Slots(jnp.zeros(shape), ea, eas)
        optim.check_slots(slots, shape, o, where=where)
