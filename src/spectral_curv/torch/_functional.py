"""The functional step: :func:`init_state` and :func:`spectral_kron` (the engine's
``optim.buckets`` → ``optim.bucket_step`` → ``optim.update_params``, math §3–§5; the states'
tensors and the parameters updated in place: ``torch._foreach_*``, and ``update_params``'
in-place fast path)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import optim

# The torch fast paths are registered up front (no lazy import inside a compiled step).
from ..backends import torch as _torch_fast_paths

_XP = optim.namespace(torch.zeros(0))
_HOST_KEYS = ("step", "refreshes")  # int64 counters on the CPU: read every step, no sync


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
        >>> sorted(st)  # doctest: +NORMALIZE_WHITESPACE
        ['B_C', 'B_K', 'V', 'alpha', 'd_C', 'd_K', 'momentum_buffer', 'refreshes',
         'rejected', 'step']
        >>> tuple(st["B_K"].shape), st["d_C"].dtype
        ((4, 4), torch.float32)
    """
    o, shape, dev = (
        options if options is not None else _options(kw),
        tuple(param.shape),
        param.device,
    )
    pl, dt = optim.plan(shape, o.max_precond_dim), _dtype(param, o.precond_dtype)
    state = optim.fresh_state(pl, shape, o, dtype=dt, device=dev, xp=_XP)
    for k in optim.COUNTERS:  # int64 tensors; `step` and `refreshes` on the CPU
        state[k] = torch.tensor(0, dtype=torch.int64, device=None if k in _HOST_KEYS else dev)
    return state


def host_counts(states: list[dict[str, Any]]) -> list[list[int]]:
    """``[step, refreshes]`` of each state as Python ints, read in one host transfer.

    Example::

        >>> import torch
        >>> from spectral_curv.torch._functional import host_counts, init_state
        >>> st = init_state(torch.zeros(2, 2))
        >>> st["step"] += 3
        >>> host_counts([st, init_state(torch.zeros(3))])
        [[3, 0], [0, 0]]
    """
    if not states:
        return []
    flat = torch.stack(
        [x if (x := s[k]).ndim == 0 else x.reshape(()) for s in states for k in _HOST_KEYS]
    ).tolist()
    return [flat[i : i + 2] for i in range(0, len(flat), 2)]


def _bucket(
    grads: list[Tensor], states: list[dict[str, Any]], key: optim.BucketKey, o: optim.Options
) -> list[Tensor]:
    """``optim.bucket_step`` for a bucket; its factors written back into the states' own
    tensors (one ``_foreach_copy_``, only when they changed) and its rejected refreshes
    counted; returns the directions."""
    pl = key.plan
    res = optim.bucket_step([optim.precond_of(s, pl) for s in states], grads, key, o)
    if key.refresh:
        if res.rejected is not None:
            torch._foreach_add_([s["rejected"] for s in states], res.rejected.unbind())
        torch._foreach_add_([s["refreshes"] for s in states], 1)
    if key.first or key.refresh:  # otherwise the factors are unchanged
        dst, src = [], []
        for s, st in zip(states, res.states):
            for k, v in zip(st._fields, st):
                if v is not None:
                    dst.append(s[k]), src.append(v)
        torch._foreach_copy_(dst, src)
    return res.directions


def _finish(
    params: list[Tensor],
    grads: list[Tensor],
    us: list[Tensor],
    states: list[dict],
    o: optim.Options,
    steps: list[int],
) -> None:
    """``optim.update_params`` in place (the registered fast path's in-place form:
    parameters and momentum updated by the ``torch._foreach_*`` kernels themselves);
    ``steps``: the new 1-based step counts."""
    torch._foreach_add_([s["step"] for s in states], 1)
    gs = [g if g.dtype == u.dtype else g.to(u.dtype) for g, u in zip(grads, us)]
    slots = [optim.slots_of(s) for s in states]
    _torch_fast_paths.update_params(params, gs, us, slots, steps, o, inplace=True)


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
    o = options if options is not None else _options(kw)
    if counts is None:
        counts = host_counts(states)
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


def _options(kw: dict[str, Any]) -> optim.Options:
    """Validated ``optim.Options`` (deprecated names mapped; torch dtypes checked)."""
    kw = optim.renamed(kw, stacklevel=4)
    unknown = sorted(set(kw) - set(optim.Options.names()))
    if unknown:  # e.g. torch.optim's `maximize`, `foreach`: not options of this optimizer
        raise TypeError(
            f"SpectralKron got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"its options are {', '.join(optim.Options.names())}"
        )
    if callable(kw.get("lr")):  # optax takes schedules; torch.optim changes `lr` instead
        raise ValueError(
            f"`lr` must be a float or a 1-element tensor, got {kw['lr']!r} "
            "(for a schedule: torch.optim.lr_scheduler)"
        )
    o = optim.Options(**kw)
    dt = o.precond_dtype
    if dt is not None and not (isinstance(dt, torch.dtype) and dt.is_floating_point):
        raise ValueError(f"`precond_dtype` must be a floating torch.dtype or None, got {dt!r}")
    return o
