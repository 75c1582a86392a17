"""``torch.compile`` support: a graph cannot branch on data, so a step with a non-finite
gradient is discarded by ``torch.where`` (the state of before the step put back), and
``nonfinite="raise"`` gives a one-time notice while dynamo traces."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from .. import optim
from ._functional import _HOST_KEYS

#: State entries a step changes in place (the others it replaces): a compiled step copies them.
_IN_PLACE = ("rejected", *optim.Slots._fields)
_NOTICE: list[bool] = []  # whether _raise_notice has warned (once per process)


def _snapshot(prm: Tensor, s: dict[str, Any]) -> tuple[Tensor, dict[str, Any], dict[str, Any]]:
    old = {k: v.clone() if k in _IN_PLACE else v for k, v in s.items() if k not in _HOST_KEYS}
    return prm, s, {"": prm.clone(), **old}


def _select(ok: Tensor, prm: Tensor, s: dict[str, Any], old: dict[str, Any]) -> None:
    """Where ``ok`` is False, put back the parameter and state of before the step (bitwise
    the new values where it is True); the counters ``step``/``refreshes`` advance."""
    prm.copy_(torch.where(ok, prm, old.pop("")))
    for k, v in old.items():
        if k in _IN_PLACE:
            s[k].copy_(torch.where(ok, s[k], v))
        elif s[k] is not v:
            s[k] = torch.where(ok, s[k], v)


def _raise_notice(ctx: Any) -> None:
    """Run by dynamo while it traces a step with ``nonfinite="raise"``."""
    if not _NOTICE:
        _NOTICE.append(True)
        msg = "nonfinite='raise' cannot raise from a graph; non-finite steps are skipped"
        warnings.warn(f"SpectralKron under torch.compile: {msg}", UserWarning, stacklevel=2)


def _all_finite(grads: list[Tensor]) -> Tensor:
    """A 0-d bool tensor: every gradient is finite (no host sync: a compiled step's check)."""
    ok = torch.ones((), dtype=torch.bool, device=grads[0].device)
    for g in grads:
        ok = ok & torch.isfinite(g).all().to(ok.device)
    return ok
