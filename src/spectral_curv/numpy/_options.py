"""Option handling of the NumPy adapter: ``optim.Options`` (one name, one default and one
validation per option: math §5) with Python numbers and a NumPy dtype, and their JSON form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import optim

_FLOATS = (
    *("lr", "precond_lr", "p", "gamma", "damping", "weight_decay", "graft_eps", "momentum"),
    *("tie_tol", "max_step_norm", "max_update_rms"),
)
_INTS = ("update_interval", "max_precond_dim", "precond_warmup", "reorth_interval", "cayley_terms")


def check_options(opts: Mapping[str, Any]) -> optim.Options:
    """Validated ``optim.Options`` (deprecated names mapped, warning at the caller's caller)
    with Python numbers and ``precond_dtype`` a floating ``np.dtype`` or None.

    Example::

        >>> import numpy as np
        >>> from spectral_curv.numpy._options import check_options
        >>> o = check_options({"lr": np.float64(0.5), "update_interval": np.int64(3)})
        >>> type(o.lr).__name__, type(o.update_interval).__name__, o.precond_dtype
        ('float', 'int', None)
        >>> check_options({"precond_dtype": "int8"})
        Traceback (most recent call last):
        ...
        ValueError: `precond_dtype` must be a real floating dtype, got 'int8'
    """
    opts = optim.renamed(opts, stacklevel=4)
    if callable(opts.get("lr")):  # set `opt.lr` between steps instead
        raise ValueError(f"`lr` must be a real number, got {opts['lr']!r}")
    o = optim.Options(**opts)
    floats = {k: float(v) for k, v in o.as_dict().items() if k in _FLOATS and v is not None}
    ints = {k: int(getattr(o, k)) for k in _INTS}
    dt = o.precond_dtype
    if dt is not None:
        try:
            npdt = np.dtype(dt)
        except TypeError:
            npdt = None
        if npdt is None or npdt.kind != "f" or isinstance(dt, bool):
            raise ValueError(f"`precond_dtype` must be a floating numpy dtype or None, got {dt!r}")
        dt = npdt
    betas = (float(o.graft_betas[0]), float(o.graft_betas[1]))
    return o.replace(**floats, **ints, graft_betas=betas, precond_dtype=dt)


def options_to_json(o: optim.Options) -> dict[str, Any]:
    """``o`` as plain JSON values (``graft_betas`` a list, ``precond_dtype`` a name or None).

    Example::

        >>> from spectral_curv.numpy._options import check_options, options_to_json
        >>> d = options_to_json(check_options({"precond_dtype": "float32"}))
        >>> d["graft_betas"], d["precond_dtype"]
        ([0.9, 0.999], 'float32')
    """
    out = o.as_dict()
    out["graft_betas"] = list(o.graft_betas)
    out["precond_dtype"] = None if o.precond_dtype is None else o.precond_dtype.name
    return out
