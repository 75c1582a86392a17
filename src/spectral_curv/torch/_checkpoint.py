"""``SpectralKron.load_state_dict``: every saved state validated (``optim.check_state``)
before any is loaded, following ``torch.optim``'s contract for hooks and foreign entries."""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import optim
from ._functional import _HOST_KEYS, _options

_SKIPPED = "skipped_steps"  # the optimizer-wide counter, a non-parameter key of `state`


def load_state_dict(opt: Optimizer, state_dict: dict[str, Any]) -> None:
    """:meth:`SpectralKron.load_state_dict` for ``opt``."""
    sd = state_dict.copy()
    for hook in opt._optimizer_load_state_dict_pre_hooks.values():
        out = hook(opt, sd)
        sd = out if out is not None else sd
    saved_groups = copy.deepcopy(sd["param_groups"])
    if len(saved_groups) != len(opt.param_groups) or any(
        len(a["params"]) != len(b["params"]) for a, b in zip(saved_groups, opt.param_groups)
    ):
        raise ValueError("loaded state dict does not match the optimizer's param groups")
    id_map = {
        i: p
        for a, b in zip(saved_groups, opt.param_groups)
        for i, p in zip(a["params"], b["params"])
    }
    groups = []
    for saved, mine in zip(saved_groups, opt.param_groups):
        with warnings.catch_warnings():  # a checkpoint from before a rename
            warnings.simplefilter("ignore", DeprecationWarning)
            saved = optim.renamed(saved)
        # an option added later takes its value from before it existed where that fixes the
        # state's layout (no `V` before `eigenvalues`), else this optimizer's
        group = {
            **opt.defaults,
            **optim.BEFORE_OPTION,
            _SKIPPED: 0,
            **saved,
            "params": mine["params"],
        }
        o = _options({k: group[k] for k in optim.Options.names()})
        group["graft_betas"] = o.graft_betas
        if isinstance(group[_SKIPPED], bool) or not isinstance(group[_SKIPPED], int):
            raise ValueError(f"state dict: `{_SKIPPED}` must be an int, got {group[_SKIPPED]!r}")
        groups.append(group)
    state: defaultdict[Any, Any] = defaultdict(dict)  # as torch.optim: fresh on first use
    for k, v in sd["state"].items():
        if k not in id_map:
            state[k] = copy.deepcopy(v)
            continue
        prm = id_map[k]
        if isinstance(v, dict) and not v:  # an entry read but never filled: no state (torch)
            continue
        grp = next(g for g in groups if any(prm is q for q in g["params"]))
        state[prm] = _load_one(prm, v, optim.Options.trusted(grp), k)
    opt.__setstate__({"state": state, "param_groups": groups})
    opt._rejected_seen = sum(
        int(st["rejected"])
        for st in state.values()
        if isinstance(st, dict) and "rejected" in st and not st["rejected"].is_meta
    )
    for hook in opt._optimizer_load_state_dict_post_hooks.values():
        hook(opt)


def _load_one(prm: Tensor, saved: Any, o: optim.Options, pid: Any) -> dict[str, Any]:
    """A validated copy of one parameter's saved state on ``prm``'s device (an integer
    counter is accepted and stored as a tensor)."""
    where = f"state dict: param {pid} (shape {tuple(prm.shape)})"
    if isinstance(saved, dict):
        saved = {
            k: torch.tensor(v, dtype=torch.int64) if k in optim.COUNTERS and type(v) is int else v
            for k, v in saved.items()
        }
        for k, v in saved.items():
            if not isinstance(v, Tensor):
                raise ValueError(f"{where}: `{k}` must be a tensor, got {type(v)!r}")
    pl = optim.plan(tuple(prm.shape), o.max_precond_dim)
    if not (isinstance(saved, dict) and any(v.is_meta for v in saved.values())):
        optim.check_state(saved, pl, tuple(prm.shape), o, where=where)  # (meta: no values)
    return {
        k: v.detach().to(torch.device("cpu") if k in _HOST_KEYS else prm.device, copy=True)
        for k, v in saved.items()
    }
