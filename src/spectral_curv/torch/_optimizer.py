"""The class :class:`SpectralKron`: param groups, ``state`` storage, the step's checks
(gradients validated before any state changes), the schedule's host mirrors."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import optim
from . import _checkpoint
from ._checkpoint import _SKIPPED
from ._compile import _all_finite, _raise_notice, _select, _snapshot
from ._functional import _options, host_counts, init_state, spectral_kron

#: Options that fix the layout of a parameter's state (its keys) when it is created.
LAYOUT_OPTIONS = ("max_precond_dim", "eigenvalues", "graft")


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
        self._layouts: dict[int, tuple[dict[str, Any], tuple[Any, ...]]] = {}
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
        if not torch.compiler.is_compiling():  # before any state changes (compile_step: eager)
            self._check_layouts()
        work = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        grads = [p.grad for _, ps in work for p in ps if p.grad is not None]
        for p in (p for _, ps in work for p in ps):
            _check_param(p)
        if not (compiling := torch.compiler.is_compiling()):
            finite, rejected = _host_flags(grads, self.state)
            seen, self._rejected_seen = getattr(self, "_rejected_seen", 0), rejected
            warned = getattr(self, "_warned", False)
            due = not warned and rejected > seen  # the frame walk only when a warning is given
            level = _caller_level() if due else 2
            self._warned = optim.warn_rejected_once(warned, seen, rejected, stacklevel=level)
            if not finite:
                if self.nonfinite == "raise":
                    raise ValueError(optim.NONFINITE_MESSAGE)
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
            o = optim.Options.trusted(group)
            fresh = set()
            for i, p in enumerate(params):
                s = self.state[p]
                if not s:
                    s.update(init_state(p, o))
                    fresh.add(i)
                elif compiling and s["step"] not in self._sched:
                    raise RuntimeError("SpectralKron: state set by hand: take one eager step")
            states = [self.state[p] for p in params]
            if not compiling:  # one host transfer for all the counters
                counts = host_counts(states)
            else:
                counts = [
                    [0, 0] if i in fresh else list(self._sched[s["step"]])
                    for i, s in enumerate(states)
                ]
            if params:
                todo.append((o, params, states, counts))
        return todo

    def _check_layouts(self) -> None:
        """Raise a ValueError when a parameter has state whose layout (its keys) is not the
        one its group's options give: :data:`LAYOUT_OPTIONS` fix it when the state is
        created (a change would be ignored, and the state dict would not load). Checked only
        for the groups whose layout options or parameter count changed since the last check,
        so an ordinary step does no work here (and a distributed one no collective)."""
        changed = []
        for g in self.param_groups:
            key = (tuple(g[k] for k in LAYOUT_OPTIONS), len(g["params"]))
            seen = self._layouts.get(id(g))  # the group itself is kept: its id is not reused
            if seen is None or seen[0] is not g or seen[1] != key:
                changed.append((g, key))
        if not changed:
            return
        msg = self._agree(next((m for g, _ in changed if (m := self._layout_problem(g))), None))
        if msg is not None:
            raise ValueError(msg)
        for g, key in changed:
            self._layouts[id(g)] = (g, key)

    def _layout_problem(self, group: dict[str, Any]) -> str | None:
        """What :meth:`_check_layouts` raises for ``group``, or None."""
        o = optim.Options.trusted(group)
        for i, p in enumerate(group["params"]):
            s = self.state.get(p)
            if not s or "step" not in s:
                continue
            want = optim.state_keys(optim.plan(tuple(p.shape), o.max_precond_dim), o)
            if set(s) != want:
                layout = {k: group[k] for k in LAYOUT_OPTIONS}
                return (
                    f"SpectralKron: param {i} of a param group (shape {tuple(p.shape)}) has "
                    f"state for other options than the group's {layout} (keys "
                    f"{sorted(set(s) ^ want)} differ): {', '.join(map(repr, LAYOUT_OPTIONS))} "
                    "fix a parameter's state when it is created and cannot change afterwards; "
                    "set them back, or drop the parameter's state (opt.state.pop(param)) to "
                    "start it afresh"
                )
        return None

    def _agree(self, problem: str | None) -> str | None:
        """The problem of :meth:`_check_layouts` as every process sees it (one process: its
        own; a distributed subclass agrees across ranks)."""
        return problem

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
        self._layouts = {}  # per group: the group and its layout options last checked
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
        _checkpoint.load_state_dict(self, state_dict)


def _caller_level() -> int:
    """The ``stacklevel`` (the function that calls this one: 1) of the first frame outside
    torch and this package: the user's ``opt.step()`` line, above the wrappers torch puts
    around ``step`` (``no_grad``, profiling hooks), where a warning should point."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


_INTERNAL = ("torch.", "spectral_curv.")


def _check_param(p: Tensor) -> None:
    g = p.grad
    if (
        g.layout is torch.strided
        and p.dtype.is_floating_point
        and g.dtype.is_floating_point
        and p.device.type != "meta"
    ):  # the usual case, in attribute reads only
        return
    if g.is_sparse:
        raise RuntimeError("SpectralKron does not support sparse gradients")
    if torch.is_complex(p) or torch.is_complex(g):
        raise RuntimeError("SpectralKron does not support complex parameters or gradients")
    if not p.is_floating_point():
        raise TypeError(f"SpectralKron needs floating-point parameters, got {p.dtype}")
    if p.device.type == "meta":
        raise TypeError("SpectralKron cannot step parameters on the `meta` device (no values)")


def _host_flags(grads: list[Tensor], state: Any) -> tuple[bool, int]:
    """Whether every gradient is finite, and the total of the ``rejected`` counters
    (refreshes of earlier steps), in one host sync per device.

    A finite 2-norm (``torch._foreach_norm``'s fused kernel, ~6× faster on the CPU than its
    max-abs) proves every entry finite; only where it is not (a NaN/inf entry, or finite
    entries whose squares overflow) does the exact max-abs check decide."""
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
            norms = torch.stack(torch._foreach_norm(by_dev[dev]))
            parts.append(torch.isfinite(norms).all().to(torch.int64))
        else:
            parts.append(torch.ones((), dtype=torch.int64, device=dev))
        if rej.get(dev):
            parts.append(torch.stack(rej[dev]).sum())
        else:
            parts.append(torch.zeros((), dtype=torch.int64, device=dev))
        ok, n = torch.stack(parts).tolist()
        if not ok and by_dev.get(dev):  # overflow of a square, or a NaN/inf entry: exact check
            ok = bool(torch.stack(torch._foreach_norm(by_dev[dev], float("inf"))).isfinite().all())
        finite, total = finite and bool(ok), total + int(n)
    return finite, total
