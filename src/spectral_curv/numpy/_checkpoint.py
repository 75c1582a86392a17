"""The NumPy adapter's state dict: NumPy arrays plus plain Python values (``np.savez`` +
``json``, no pickle), exported by :func:`export` and validated by :func:`restore` with the
engine's checks (``optim.check_state``: counters, math §4's normalisation, orthogonal bases).
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import optim
from ._layout import Layout, np_dtype
from ._options import check_options, options_to_json

#: Tag of :meth:`SpectralKron.state_dict` (checked by :meth:`SpectralKron.load_state_dict`).
FORMAT = "spectral_curv.numpy.SpectralKron/1"

#: Options added after the first release: a state dict without them still loads, with this
#: optimizer's value (``optim.BEFORE_OPTION``'s where the option fixes the state's layout).
_LATER_OPTIONS = ("rotation",)
_SD_KEYS = ("format", "params", "options", "skipped_steps", "state")


def _plain(x: Any) -> Any:
    """Tuples → lists, recursively (a state dict may have been through json or not)."""
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def export(
    layout: Layout,
    opts: optim.Options,
    skipped: int,
    plans: list[optim.Plan],
    states: list[dict[str, Any]],
) -> dict[str, Any]:
    """The state dict of an optimizer (its layout, options, skipped steps, plans and per-
    parameter states; the format of :meth:`SpectralKron.state_dict`). Arrays are copies.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> from spectral_curv.numpy._checkpoint import export
        >>> from spectral_curv.numpy._layout import Layout
        >>> lay, o = Layout.of([np.zeros(3)]), optim.Options()
        >>> sd = export(lay, o, 0, [lay.plan(0, o)], [lay.fresh(0, o)])
        >>> sd["params"]["kind"], sorted(sd["state"][0])
        ('list', ['d', 'momentum_buffer', 'plan', 'refreshes', 'rejected', 'step'])
    """
    state = [
        {
            "plan": list(pl),
            **{k: int(v) if k in optim.COUNTERS else np.array(v, copy=True) for k, v in s.items()},
        }
        for pl, s in zip(plans, states)
    ]
    return {
        "format": FORMAT,
        "params": layout.describe(),
        "options": options_to_json(opts),
        "skipped_steps": int(skipped),
        "state": state,
    }


def restore(
    layout: Layout, current: optim.Options, state_dict: Any
) -> tuple[optim.Options, int, list[optim.Plan], list[dict[str, Any]]]:
    """Validate :func:`export` output for an optimizer of ``layout`` and options ``current``
    (which give the options a state dict predates); returns ``(options, skipped_steps,
    plans, states)``, or raises a ValueError naming the parameter and the field.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> from spectral_curv.numpy._checkpoint import export, restore
        >>> from spectral_curv.numpy._layout import Layout
        >>> lay, o = Layout.of([np.zeros(3)]), optim.Options()
        >>> sd = export(lay, o, 2, [lay.plan(0, o)], [lay.fresh(0, o)])
        >>> restore(lay, o, sd)[1]
        2
        >>> restore(lay, o, {**sd, "skipped_steps": -1})
        Traceback (most recent call last):
        ...
        ValueError: state dict `skipped_steps` must be an int >= 0, got -1
    """
    sd = state_dict
    if not isinstance(sd, Mapping) or set(sd) != set(_SD_KEYS):
        got = sorted(sd) if isinstance(sd, Mapping) else type(sd)
        raise ValueError(f"state dict must have the keys {list(_SD_KEYS)}, got {got}")
    if sd["format"] != FORMAT:
        raise ValueError(f"state dict format must be {FORMAT!r}, got {sd['format']!r}")
    mine, theirs = layout.describe(), sd["params"]
    if not isinstance(theirs, Mapping) or set(theirs) != set(mine):
        raise ValueError(f"state dict `params` must have the keys {sorted(mine)}")
    for k in ("kind", "names", "shapes", "dtypes"):
        if _plain(theirs[k]) != mine[k]:
            raise ValueError(
                f"state dict is for other parameters: `params.{k}` is {theirs[k]!r}, "
                f"this optimizer has {mine[k]!r}"
            )
    saved = sd["options"]
    if not isinstance(saved, Mapping):
        raise ValueError("state dict `options` must be a dict")
    with warnings.catch_warnings():  # a state dict saved before a rename
        warnings.simplefilter("ignore", DeprecationWarning)
        saved = optim.renamed(saved)
    want = set(optim.Options.names())
    # a state dict saved before an option existed: that option keeps this optimizer's
    saved = {**{k: getattr(current, k) for k in _LATER_OPTIONS}, **optim.BEFORE_OPTION, **saved}
    if set(saved) != want:
        raise ValueError(f"state dict `options` must have the keys {sorted(want)}")
    opts = check_options(saved)
    skipped = sd["skipped_steps"]
    if isinstance(skipped, bool) or not isinstance(skipped, numbers.Integral) or skipped < 0:
        raise ValueError(f"state dict `skipped_steps` must be an int >= 0, got {skipped!r}")
    saved_states = sd["state"]
    n = len(layout.shapes)
    if not isinstance(saved_states, (list, tuple)) or len(saved_states) != n:
        raise ValueError(f"state dict `state` must be a list of {n} per-parameter dicts")
    states = [_load_one(layout, i, s, opts) for i, s in enumerate(saved_states)]
    return opts, int(skipped), [layout.plan(i, opts) for i in range(n)], states


def _load_one(layout: Layout, i: int, saved: Any, opts: optim.Options) -> dict[str, Any]:
    """Parameter ``i``'s validated state, copied into the layout's namespace and device."""
    where = f"state dict `state[{i}]` (param {layout.label(i)})"
    if not isinstance(saved, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(saved)!r}")
    plan = layout.plan(i, opts)
    got_plan: Any = saved.get("plan")
    with contextlib.suppress(TypeError):  # not a sequence of a Plan's fields
        got_plan = optim.Plan(*got_plan)
    if got_plan != plan:
        raise ValueError(f"{where}: plan {saved.get('plan')!r} does not match {list(plan)!r}")
    template = layout.fresh(i, opts)  # the keys in their order, the arrays' dtype
    if set(saved) != set(template) | {"plan"}:
        raise ValueError(
            f"{where} must have the keys {sorted(set(template) | {'plan'})}, got {sorted(saved)}"
        )
    out: dict[str, Any] = {}
    for k, ref in template.items():
        v = saved[k]
        if k not in optim.COUNTERS:
            if not isinstance(v, (np.ndarray, np.generic)):
                raise ValueError(f"{where}: `{k}` must be a NumPy array, got {type(v)!r}")
            if v.dtype != (want := np_dtype(ref.dtype)):
                raise ValueError(f"{where}: `{k}` must have dtype {want}, got {v.dtype}")
            v = np.array(v, copy=True)
        out[k] = v
    optim.check_state(out, plan, layout.shapes[i], opts, where=where)
    return {k: int(v) if k in optim.COUNTERS else layout.from_numpy(i, v) for k, v in out.items()}
