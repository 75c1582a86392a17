"""``torch.compile`` support: a graph cannot branch on data, so a step with a non-finite
gradient is discarded by ``torch.where`` (the state of before the step put back), and
``nonfinite="raise"`` gives a one-time notice while dynamo traces."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._functional import _HOST_KEYS

_NOTICE: list[bool] = []  # whether _raise_notice has warned (once per process)


def _snapshot(prm: Tensor, s: dict[str, Any]) -> tuple[Tensor, dict[str, Any], dict[str, Any]]:
    """Copies of ``prm`` and its state (a step updates every entry in place)."""
    old = {k: v.clone() for k, v in s.items() if k not in _HOST_KEYS}
    return prm, s, {"": prm.clone(), **old}


def _select(ok: Tensor, prm: Tensor, s: dict[str, Any], old: dict[str, Any]) -> None:
    """Where ``ok`` is False, put back the parameter and state of before the step (bitwise
    the new values where it is True); the counters ``step``/``refreshes`` advance."""
    prm.copy_(torch.where(ok, prm, old.pop("")))
    for k, v in old.items():
        s[k].copy_(torch.where(ok, s[k], v))


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


#: What a failed compilation raises (dynamo: a graph break under ``fullgraph``, a backend that
#: failed, e.g. inductor without a C++ compiler); the step has changed nothing by then.
_COMPILE_ERRORS: tuple[type[BaseException], ...] = (
    torch._dynamo.exc.BackendCompilerFailed,
    torch._dynamo.exc.Unsupported,
    torch._inductor.exc.InductorError,
)


class CompileFallbackWarning(UserWarning):
    """:func:`compile_step` could not compile the step and steps eagerly instead (math §4.7:
    the same step either way).

    Example (a ``UserWarning``, so ``-W error::UserWarning`` catches it too)::

        >>> from spectral_curv.torch import CompileFallbackWarning
        >>> issubclass(CompileFallbackWarning, UserWarning)
        True
    """


def compile_step(opt: torch.optim.Optimizer, **compile_kwargs: Any) -> Callable[..., Any]:
    """``torch.compile(opt.step, fullgraph=True, **compile_kwargs)``, falling back to the eager
    ``opt.step`` (one :class:`CompileFallbackWarning`) wherever compiling fails: no C++
    compiler for inductor, a backend that cannot run, a graph break. Dynamo compiles each
    schedule phase (math §4.7) on its first call, so a later phase can fall back too; a
    failed compilation changes no state, and the eager step then takes the same step.
    docs/guide/torch.md, "torch.compile".

    Example (a backend that always fails: the step is taken eagerly, once warned)::

        >>> import warnings
        >>> import torch
        >>> from spectral_curv.torch import CompileFallbackWarning, SpectralKron, compile_step
        >>> w = torch.nn.Parameter(torch.ones(3, 2))
        >>> opt = SpectralKron([w], lr=0.1, nonfinite="skip")
        >>> def broken(gm, inputs):
        ...     raise RuntimeError("no compiler here")
        >>> step = compile_step(opt, backend=broken)
        >>> w.grad = torch.ones(3, 2)
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     loss = step()
        >>> fell = [m for m in seen if m.category is CompileFallbackWarning]
        >>> len(fell), "no compiler here" in str(fell[0].message), int(opt.state[w]["step"])
        (1, True, 1)
    """
    compiled = torch.compile(opt.step, **{"fullgraph": True, **compile_kwargs})
    eager = opt.step
    failed: list[BaseException] = []

    def step(closure: Callable[[], Any] | None = None) -> Any:
        check = getattr(opt, "_check_layouts", None)
        if check is not None:  # eager, outside the graph (a graph cannot raise it)
            check()
        if not failed:
            try:
                return compiled() if closure is None else compiled(closure)
            except _COMPILE_ERRORS as e:
                failed.append(e)
                warnings.warn(
                    f"torch.compile of {type(opt).__name__}.step failed ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:300]}); stepping eagerly from now on",
                    CompileFallbackWarning,
                    stacklevel=2,
                )
        return eager() if closure is None else eager(closure)

    return step
