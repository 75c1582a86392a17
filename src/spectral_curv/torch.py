"""``torch.optim`` adapter: :class:`SpectralKron` and the functional :func:`spectral_kron`.

Every number and the order of a step come from the engine, :mod:`spectral_curv.optim`
(``Options``, ``buckets``, ``precondition_step``, ``update_param``; math §3–§5). This module
owns only torch's conventions: ``state`` storage, param groups, stacking same-shaped layers
into one batched refresh, ``torch._foreach_*`` kernels for the last step, checkpoints.

Routing (``optim.plan``): order ≥ 2 weights get the Kronecker factors on
``(shape[0], prod(shape[1:]))`` (size-1 dimensions dropped first), a side longer than
``max_precond_dim`` kept diagonal; order ≤ 1 (biases, norms) the diagonal scheme. Example::

    >>> import torch
    >>> from spectral_curv.torch import SpectralKron
    >>> model = torch.nn.Linear(4, 3)
    >>> opt = SpectralKron(model.parameters(), lr=1e-2)
    >>> model(torch.randn(8, 4)).square().mean().backward()
    >>> opt.step()
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import diag, kron, optim

# The torch fast paths are registered up front (no lazy import inside a compiled step).
from .backends import torch as _torch_fast_paths  # noqa: F401

__all__ = ["SpectralKron", "init_state", "spectral_kron"]

_XP = optim.namespace(torch.zeros(0))
_HOST_KEYS = ("step", "refreshes")  # int64 counters on the CPU: read every step, no sync
_COUNTERS = ("step", "refreshes", "rejected")
_SKIPPED = "skipped_steps"  # the optimizer-wide counter, a non-parameter key of `state`


def _state_plan(state: dict[str, Any]) -> optim.Plan:
    """The plan a state was created with (read from its keys, so that changing
    ``max_precond_dim`` later cannot mix incompatible states)."""
    if "d" in state:
        return optim.Plan("diag")
    r, c = state["d_C"].shape[-1], state["d_K"].shape[-1]
    return optim.Plan("kron", r, c, "B_C" not in state, "B_K" not in state)


def _dtype(param: Tensor, option: Any) -> torch.dtype:
    return optim.precond_dtype_for(_XP, option, param.dtype)


def init_state(param: Tensor, options: optim.Options | None = None, **kw: Any) -> dict[str, Any]:
    """A fresh state dict for ``param`` (``S = I``; the first step sets its scale), as
    :class:`SpectralKron` creates it; ``options`` or keyword options as in ``optim.Options``.

    Example::

        >>> import torch
        >>> from spectral_curv.torch import init_state
        >>> st = init_state(torch.zeros(3, 4))
        >>> sorted(st)
        ['B_C', 'B_K', 'alpha', 'd_C', 'd_K', 'momentum_buffer', 'refreshes', 'rejected', 'step']
        >>> tuple(st["B_K"].shape), st["d_C"].dtype
        ((4, 4), torch.float32)
    """
    o = options if options is not None else optim.Options(**kw)
    pl = optim.plan(tuple(param.shape), o.max_precond_dim)
    dt = _dtype(param, o.precond_dtype)
    pre = optim.init(pl, optim.matrix_shape(pl, tuple(param.shape)), dtype=dt, xp=_XP)
    slots = optim.init_slots(_XP, tuple(param.shape), o, dtype=dt, device=param.device)
    state: dict[str, Any] = {k: torch.tensor(0, dtype=torch.int64) for k in _HOST_KEYS}
    state["rejected"] = torch.tensor(0, dtype=torch.int64, device=param.device)
    for k, v in (*zip(pre._fields, pre), *zip(slots._fields, slots)):
        if v is not None:
            state[k] = v.to(param.device)
    return state


def _precond(states: list[dict[str, Any]], pl: optim.Plan) -> optim.Precond:
    """The factor state of a bucket, stacked (Kronecker) or concatenated (diagonal)."""
    if pl.kind == "diag":
        return diag.DiagState(torch.cat([s["d"].reshape(-1) for s in states]))

    def stack(key: str) -> Tensor | None:
        if key not in states[0]:
            return None
        if len(states) == 1:  # a view, no copy
            return states[0][key].unsqueeze(0)
        return torch.stack([s[key] for s in states])

    return kron.KronState(*(stack(k) for k in kron.KronState._fields))


def _bucket(
    grads: list[Tensor], states: list[dict[str, Any]], key: optim.BucketKey, o: optim.Options
) -> list[Tensor]:
    """One engine call for a bucket; writes the factors back; returns the directions.

    Diagonal-scheme parameters are refreshed as one concatenated vector (elementwise math),
    so keep-last-good decides for the bucket; the first step (a per-parameter mean) and a
    ``step_scale="p2"`` step with ``p ≠ 2`` (a per-parameter norm) run one at a time."""
    pl, dt = key.plan, states[0]["momentum_buffer"].dtype
    whole = o.step_scale == "p2" and o.p != 2  # its norm is per parameter
    if pl.kind == "diag" and (key.first or whole) and len(grads) > 1:
        return [u for g, s in zip(grads, states) for u in _bucket([g], [s], key, o)]
    if pl.kind == "diag":
        G = torch.cat([g.reshape(-1).to(dt) for g in grads])
    else:
        G = torch.stack([g.reshape(pl.rows, pl.cols) for g in grads]).to(dt)
    (st,), (ok,), (u,) = optim.precondition_step(
        [_precond(states, pl)],
        [G],
        first=key.first,
        refresh=key.refresh,
        reorth=key.reorth,
        options=o,
    )
    if key.refresh:
        bad = (~ok).to(torch.int64)
        for i, s in enumerate(states):
            s["rejected"].add_(bad if pl.kind == "diag" else bad[i])
            s["refreshes"].add_(1)
    if pl.kind == "diag":
        sizes = [g.numel() for g in grads]
        if key.first or key.refresh:
            for s, d in zip(states, torch.split(st.d, sizes)):
                s["d"] = d.view(s["d"].shape).clone() if len(states) > 1 else d.view(s["d"].shape)
        return [x.view(g.shape) for x, g in zip(torch.split(u, sizes), grads)]
    if key.first or key.refresh:  # otherwise the factors are unchanged
        for k, val in zip(kron.KronState._fields, st):
            if val is not None:
                for i, s in enumerate(states):
                    s[k] = val[i].clone()
    return [u[i].reshape(g.shape) for i, g in enumerate(grads)]


def _finish(
    params: list[Tensor],
    grads: list[Tensor],
    us: list[Tensor],
    states: list[dict],
    o: optim.Options,
    steps: list[int],
) -> None:
    """``optim.update_param`` for each parameter (``steps``: the new 1-based step counts);
    where it reduces to RMS clipping, momentum and the step (no grafting, a float lr, the
    parameter in the factors' dtype), the same operations as a few ``torch._foreach_*``."""
    fused = not isinstance(o.lr, Tensor) and o.graft is None
    fp, fu, fb = [], [], []
    for prm, g, u, s, t in zip(params, grads, us, states, steps):
        s["step"].add_(1)
        if fused and prm.dtype == u.dtype:
            fp.append(prm), fu.append(u), fb.append(s["momentum_buffer"])
            continue
        slots = optim.Slots(*(s.get(k) for k in optim.Slots._fields))
        new, slots = optim.update_param(prm, g.to(u.dtype), u, slots, step=t, options=o)
        prm.copy_(new)
        for k, v in zip(optim.Slots._fields, slots):
            if v is not None:
                s[k].copy_(v)
    if fp:
        if o.max_update_rms is not None:  # optim.clip_rms: U·c/max(rms(U), c)
            c = o.max_update_rms
            rms = [
                (n / math.sqrt(max(u.numel(), 1))).clamp_min_(c)
                for n, u in zip(torch._foreach_norm(fu), fu)
            ]
            fu = torch._foreach_mul(fu, torch._foreach_reciprocal(rms))
            torch._foreach_mul_(fu, c)
        if o.momentum:
            torch._foreach_mul_(fb, o.momentum)
            torch._foreach_add_(fb, fu)
            fu = fb
        if o.weight_decay:
            torch._foreach_mul_(fp, 1 - o.lr * o.weight_decay)
        torch._foreach_sub_(fp, torch._foreach_mul(fu, o.lr))


def spectral_kron(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    options: optim.Options | None = None,
    *,
    counts: list[list[int]] | None = None,
    **kw: Any,
) -> None:
    """Functional form of :class:`SpectralKron`: one step, states mutated in place.

    ``states[i]`` comes from :func:`init_state` for ``params[i]``; ``options`` or keyword
    options as in ``optim.Options``. Grads are assumed finite and dense (the class checks).
    ``counts[i]``, ``[step, refreshes]`` of ``states[i]`` as Python ints (advanced in place),
    decides the schedule without reading the tensor counters (``torch.compile`` cannot
    branch on them); by default they are read from the states.

    Example (one functional step equals one :class:`SpectralKron` step)::

        >>> import torch
        >>> from spectral_curv.torch import SpectralKron, init_state, spectral_kron
        >>> w1, w2 = (torch.nn.Parameter(torch.ones(3, 2)) for _ in range(2))
        >>> g = torch.arange(6.0).reshape(3, 2)
        >>> opt = SpectralKron([w1], lr=0.1)
        >>> w1.grad = g
        >>> opt.step()
        >>> with torch.no_grad():
        ...     spectral_kron([w2], [g], [init_state(w2)], **opt.defaults)
        >>> torch.equal(w1, w2), bool((w2 < 1).any())
        (True, True)
    """
    o = options if options is not None else optim.Options(**kw)
    if counts is None:
        counts = [[int(s["step"].item()), int(s["refreshes"].item())] for s in states]
    entries = [
        (_state_plan(s), (prm.device, s["momentum_buffer"].dtype), c[0], c[1])
        for prm, s, c in zip(params, states, counts)
    ]
    us: dict[int, Tensor] = {}
    for key, idx in optim.buckets(entries, o).items():
        us.update(zip(idx, _bucket([grads[i] for i in idx], [states[i] for i in idx], key, o)))
        for i in idx:
            counts[i][:] = [counts[i][0] + 1, counts[i][1] + 1 if key.refresh else counts[i][1]]
    _finish(params, grads, [us[i] for i in range(len(params))], states, o, [c[0] for c in counts])


class SpectralKron(Optimizer):
    """Kronecker spectral-factorized preconditioner (Lin et al., ICML 2025) as a torch optimizer.

    Update of a matrix weight ``M`` with gradient ``G`` (math §4–§5)::

        every `update_interval` steps:  (α, S_C, S_K) ← spectral refresh with the GOP of G
        U = α^{-1/p} S_C^{-1/p} G S_K^{-1/p}            (rotated form: no eigh, no inverse)
        U ← graft/clip(U);  m ← momentum·m + U;  M ← (1 − lr·wd) M − lr·m

    Options: ``lr`` and ``precond_lr`` (β₂) positionally, the rest by keyword, with the
    names, defaults and meanings of :class:`spectral_curv.optim.Options`; each param group
    may override any of them. ``nonfinite="raise"`` (default) raises before any state
    changes when a gradient has NaN/inf; ``"skip"`` skips the whole step (``skipped_steps``).
    No exception escapes a refresh: one that fails (a singular solve, non-finite or
    non-positive factors, an exploding rotation) is discarded, the last good factors kept,
    ``state[p]["rejected"]`` counts it and a ``RejectedRefreshWarning`` is given once.

    ``torch.compile(opt.step, fullgraph=True)`` gives one graph per schedule phase (the
    schedule is read from host copies of the counters) and the eager numbers. In a graph,
    which cannot branch on data, a NaN/inf gradient skips the step for either ``nonfinite``
    (``torch.where`` keeps parameters, momentum and factors; ``step`` advances) and no
    warning is given (the ``rejected`` counters count): ``docs/guide/torch.md``.

    Example (a linear least-squares fit)::

        >>> import torch
        >>> from spectral_curv.torch import SpectralKron
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(4, 3)
        >>> X = torch.randn(32, 4)
        >>> Y = X @ torch.randn(4, 3)
        >>> opt = SpectralKron(model.parameters(), lr=0.05, momentum=0.0)
        >>> loss = lambda: (model(X) - Y).square().mean()
        >>> l0 = loss().item()
        >>> for _ in range(30):
        ...     opt.zero_grad()
        ...     loss().backward()
        ...     opt.step()
        >>> st = opt.state[model.weight]
        >>> int(st["step"]), tuple(st["B_C"].shape), st["B_C"].dtype, bool(loss().item() < 0.1 * l0)
        (30, (3, 3), torch.float32, True)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        precond_lr: float = 0.1,
        **options: Any,
    ) -> None:
        o = _options({"lr": lr, "precond_lr": precond_lr, **options})
        self._skips: dict[str, Tensor] = {}  # see _host_state
        self._sched: dict[Tensor, list[int]] = {}
        super().__init__(params, o.as_dict())

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """``torch.optim`` semantics; the group's own hyperparameters are validated too."""
        group = optim.renamed(param_group)
        names = optim.Options.names()
        o = _options({**self.defaults, **{k: v for k, v in group.items() if k in names}})
        group["graft_betas"] = o.graft_betas
        group.setdefault(_SKIPPED, self.skipped_steps if self.param_groups else 0)
        super().add_param_group(group)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped by ``nonfinite="skip"``; kept in every param group, so that
        ``state_dict``, ``copy.deepcopy`` and pickling keep it (compiled steps count theirs
        in a tensor, folded in here)."""
        n = int(self.param_groups[0].get(_SKIPPED, 0)) if self.param_groups else 0
        return n + int(self._skips["n"]) if self._skips else n

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        for n in self._skips.values():  # zeroed, not removed: a graph expects it
            n.zero_()
        for group in self.param_groups:
            group[_SKIPPED] = int(value)

    @property
    def nonfinite(self) -> str:
        """``"raise"`` when any param group says so, else ``"skip"`` (a step is whole)."""
        return "raise" if any(g["nonfinite"] == "raise" for g in self.param_groups) else "skip"

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimisation step (``closure`` re-evaluates the loss, as in ``torch.optim``).

        Every gradient is validated (dense, real, finite) before any state is created or
        changed: a bad gradient leaves the optimizer and the parameters exactly as they were
        (under ``torch.compile``: see the class docstring).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        grads = [p.grad for _, ps in work for p in ps if p.grad is not None]
        for p in (p for _, ps in work for p in ps):
            _check_param(p)
        if not (compiling := torch.compiler.is_compiling()):
            finite, rejected = _host_flags(grads, self.state)
            seen, self._rejected_seen = getattr(self, "_rejected_seen", 0), rejected
            if rejected > seen and not getattr(self, "_warned", False):
                self._warned = True
                warnings.warn(optim.REJECTED_MESSAGE, optim.RejectedRefreshWarning, stacklevel=2)
            if not finite:
                if self.nonfinite == "raise":
                    raise ValueError(
                        "SpectralKron: a gradient contains NaN or inf; no state was changed "
                        "(pass nonfinite='skip' to skip such steps instead)"
                    )
                self.skipped_steps += 1
                return loss
        elif self.nonfinite == "raise":
            from torch._dynamo.comptime import comptime

            comptime(_raise_notice)  # runs while dynamo traces: no graph break
        todo = self._prepare(work, compiling)
        saved = [_snapshot(p, s) for _, ps, ss, _ in todo for p, s in zip(ps, ss) if compiling]
        for o, params, states, counts in todo:
            gs = [p.grad for p in params if p.grad is not None]  # all of them: see `work`
            spectral_kron(params, gs, states, o, counts=counts)
            self._sched.update((s["step"], c) for s, c in zip(states, counts))
        if saved:  # compiled: the step is discarded where a gradient is not finite
            ok = _all_finite(grads)
            for prm, s, old in saved:
                _select(ok.to(prm.device), prm, s, old)
            if not self._skips:
                self._skips["n"] = torch.zeros((), dtype=torch.int64, device=ok.device)
            self._skips["n"].add_((~ok).to(self._skips["n"].device, torch.int64))
        return loss

    def _prepare(
        self, work: list[tuple[dict, list[Tensor]]], compiling: bool
    ) -> list[tuple[optim.Options, list[Tensor], list[dict[str, Any]], list[list[int]]]]:
        """``(options, params, states, counts)`` per param group, creating missing state.
        ``counts``, ``[step, refreshes]`` as Python ints, decide the schedule: read from the
        tensor counters when eager and kept in ``self._sched`` (keyed by the ``step`` tensor,
        which every alias of a state shares), read from there when compiled, so that dynamo
        makes one graph per phase (first, refresh, plain, re-orthonormalise)."""
        todo = []
        for group, params in work:
            params = [p for p in params if self._owns(p)]
            o, counts = optim.Options.trusted(group), []
            for p in params:
                s = self.state[p]
                if not s:
                    s.update(init_state(p, o))
                    counts.append([0, 0])
                elif not compiling:
                    counts.append([int(s["step"].item()), int(s["refreshes"].item())])
                elif s["step"] in self._sched:
                    counts.append(list(self._sched[s["step"]]))
                else:
                    raise RuntimeError("SpectralKron: state set by hand: take one eager step")
            if params:
                todo.append((o, params, [self.state[p] for p in params], counts))
        return todo

    def _owns(self, param: Tensor) -> bool:
        """Whether this optimizer updates ``param`` (a distributed subclass updates only the
        parameters its rank owns, after every gradient was validated)."""
        return True

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim``'s, with the steps skipped under ``torch.compile`` counted."""
        self.skipped_steps = self.skipped_steps  # folds self._skips into the param groups
        return super().state_dict()

    def __getstate__(self) -> dict[str, Any]:
        self.skipped_steps = self.skipped_steps
        return super().__getstate__()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._host_state()

    def _host_state(self) -> None:
        """Containers a compiled step fills in (dynamo drops attribute writes in a step, not
        dict updates): ``_skips["n"]`` counts its skipped steps; ``_sched``: see ``_prepare``."""
        self._skips, self._sched = {}, {}
        for s in self.state.values():
            if isinstance(s, dict) and isinstance(s.get("step"), Tensor) and not s["step"].is_meta:
                self._sched[s["step"]] = [int(s["step"]), int(s.get("refreshes", 0))]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Validate, then load, following ``torch.optim``'s contract (pre-hooks see and may
        replace the whole state dict, post-hooks see the loaded state, entries not keyed by a
        parameter are copied as is), except that tensors keep their saved dtype (torch would
        cast float32 factors of a bf16 model) and integer ``step`` entries are accepted.

        A checkpoint for other shapes, with non-finite, non-positive or non-orthogonal
        factors, or with bad counters raises a ValueError naming the parameter and the
        field, and leaves the optimizer exactly as it was.
        """
        sd = state_dict.copy()
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            out = hook(self, sd)
            sd = out if out is not None else sd
        saved_groups = copy.deepcopy(sd["param_groups"])
        if len(saved_groups) != len(self.param_groups) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(saved_groups, self.param_groups)
        ):
            raise ValueError("loaded state dict does not match the optimizer's param groups")
        id_map = {
            i: p
            for a, b in zip(saved_groups, self.param_groups)
            for i, p in zip(a["params"], b["params"])
        }
        groups = []
        for saved, mine in zip(saved_groups, self.param_groups):
            with warnings.catch_warnings():  # a checkpoint from before a rename
                warnings.simplefilter("ignore", DeprecationWarning)
                saved = optim.renamed(saved)
            group = {**self.defaults, _SKIPPED: 0, **saved, "params": mine["params"]}
            o = _options({k: group[k] for k in optim.Options.names()})
            group["graft_betas"] = o.graft_betas
            if isinstance(group[_SKIPPED], bool) or not isinstance(group[_SKIPPED], int):
                raise ValueError(
                    f"state dict: `{_SKIPPED}` must be an int, got {group[_SKIPPED]!r}"
                )
            groups.append(group)
        state: dict[Any, Any] = {}
        for k, v in sd["state"].items():
            if k not in id_map:
                state[k] = copy.deepcopy(v)
                continue
            prm = id_map[k]
            grp = next(g for g in groups if any(prm is q for q in g["params"]))
            state[prm] = _load_one(prm, v, optim.Options.trusted(grp), k)
        self.__setstate__({"state": state, "param_groups": groups})
        self._rejected_seen = sum(
            int(st["rejected"])
            for st in state.values()
            if isinstance(st, dict) and "rejected" in st and not st["rejected"].is_meta
        )
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)


def _load_one(prm: Tensor, saved: Any, o: optim.Options, pid: Any) -> dict[str, Any]:
    """A validated copy of one parameter's saved state on ``prm``'s device (an integer
    counter is accepted and stored as a tensor)."""
    where = f"state dict: param {pid} (shape {tuple(prm.shape)})"
    if isinstance(saved, dict):
        saved = {
            k: torch.tensor(v, dtype=torch.int64) if k in _COUNTERS and type(v) is int else v
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


def _check_param(p: Tensor) -> None:
    g = p.grad
    if g.is_sparse:
        raise RuntimeError("SpectralKron does not support sparse gradients")
    if torch.is_complex(p) or torch.is_complex(g):
        raise RuntimeError("SpectralKron does not support complex parameters or gradients")
    if not p.is_floating_point():
        raise TypeError(f"SpectralKron needs floating-point parameters, got {p.dtype}")
    if p.device.type == "meta":
        raise TypeError("SpectralKron cannot step parameters on the `meta` device (no values)")


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


def _host_flags(grads: list[Tensor], state: Any) -> tuple[bool, int]:
    """Whether every gradient is finite (a fused max-abs per tensor, NaN propagating), and
    the total of the ``rejected`` counters (refreshes of earlier steps), in one host sync
    per device."""
    by_dev: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        if g.numel():
            by_dev.setdefault(g.device, []).append(g)
    rej: dict[torch.device, list[Tensor]] = {}
    for st in state.values():
        if isinstance(st, dict) and isinstance(st.get("rejected"), Tensor):
            rej.setdefault(st["rejected"].device, []).append(st["rejected"])
    finite, total = True, 0
    for dev in by_dev.keys() | rej.keys():
        parts = []
        if by_dev.get(dev):
            norms = torch.stack(torch._foreach_norm(by_dev[dev], float("inf")))
            parts.append(torch.isfinite(norms).all().to(torch.int64))
        else:
            parts.append(torch.ones((), dtype=torch.int64, device=dev))
        if rej.get(dev):
            parts.append(torch.stack(rej[dev]).sum())
        else:
            parts.append(torch.zeros((), dtype=torch.int64, device=dev))
        ok, n = torch.stack(parts).tolist()
        finite, total = finite and bool(ok), total + int(n)
    return finite, total


def _options(kw: dict[str, Any]) -> optim.Options:
    """Validated ``optim.Options`` (deprecated names mapped; torch dtypes checked)."""
    o = optim.Options(**optim.renamed(kw, stacklevel=4))
    dt = o.precond_dtype
    if dt is not None and not (isinstance(dt, torch.dtype) and dt.is_floating_point):
        raise ValueError(f"`precond_dtype` must be a floating torch.dtype or None, got {dt!r}")
    return o
