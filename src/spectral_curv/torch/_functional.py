"""The functional step: :func:`init_state` and :func:`spectral_kron` (buckets of same-plan
parameters through ``optim.precondition_step``, the last step with ``torch._foreach_*``)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor

from .. import _array as A
from .. import diag, kron, optim

# The torch fast paths are registered up front (no lazy import inside a compiled step).
from ..backends import torch as _torch_fast_paths  # noqa: F401

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


def _precond(states: list[dict[str, Any]], pl: optim.Plan) -> optim.Precond:
    """The factor state of a bucket, stacked (Kronecker) or concatenated (diagonal)."""
    if pl.kind == "diag":
        return diag.DiagState(torch.cat([s["d"].reshape(-1) for s in states]))
    pre = [optim.precond_of(s, pl) for s in states]
    if len(pre) == 1:  # a view, no copy
        return kron.KronState(*(None if v is None else v.unsqueeze(0) for v in pre[0]))
    return optim.stack_precond(pre)


def segment_direction(
    d: Tensor, g: Tensor, sizes: list[int], p: Any, ref: Tensor | None = None
) -> Tensor:
    """Root ``p``'s diagonal direction ``d^{-1/p} ⊙ g`` rescaled, per segment of ``sizes`` (one
    parameter each), to the 2-norm of ``ref = d^{-1/2} ⊙ g`` (math §3, §4.8; formed here if
    not given): ``optim.direction`` with ``norm_p=2`` on each slice of a concatenated bucket,
    in a fixed number of kernels.
    As ``maps.match_norm``: ``d^{-1/p}`` relative to the segment's smallest ``d`` (no
    overflow); the norms accumulate in float64, where no square of a float32 entry
    overflows or underflows (float64 entries: each norm scaled by its own largest entry).

    Example (two segments; each has the size of its own ``p = 2`` step)::

        >>> import torch
        >>> from spectral_curv.torch._functional import segment_direction
        >>> d, g = torch.tensor([4.0, 1.0, 16.0]), torch.ones(3)
        >>> u = segment_direction(d, g, [2, 1], p=1.0)
        >>> [round(float(x), 4) for x in u]  # (1/4, 1)·|(1/2, 1)|/|(1/4, 1)|, then 1/4
        [0.2712, 1.0847, 0.25]
    """
    n, dev = len(sizes), d.device
    seg = torch.repeat_interleave(
        torch.arange(n, device=dev), torch.tensor(sizes, device=dev), output_size=d.numel()
    )

    def per_segment(x: Tensor, reduce: str, init: float) -> Tensor:
        out = torch.full((n,), init, dtype=x.dtype, device=dev)
        return out.scatter_reduce_(0, seg, x, reduce, include_self=reduce == "sum")

    ld = torch.log(d)
    out = g * torch.sub(per_segment(ld, "amin", math.inf)[seg], ld).div_(p).exp_()
    ref = g * d.rsqrt() if ref is None else ref
    wide = torch.float64
    tiny = torch.finfo(wide).smallest_normal
    if d.dtype == wide:  # nothing wider: each norm from entries scaled by its own largest

        def norm_sq(x: Tensor) -> tuple[Tensor, Tensor]:
            big = per_segment(x.abs(), "amax", 0.0).clamp_min_(tiny)
            return per_segment((x / big[seg]).square_(), "sum", 0.0), big

        (n_ref, m_ref), (n_out, m_out) = norm_sq(ref), norm_sq(out)
        ratio = m_ref.div_(m_out).mul_(n_ref.div_(n_out.clamp_min_(tiny)).sqrt_())
    else:  # float32/bf16: no square overflows or underflows in float64
        n_ref = per_segment(ref.to(wide).square(), "sum", 0.0)
        n_out = per_segment(out.to(wide).square(), "sum", 0.0)
        ratio = n_ref.div_(n_out.clamp_min_(tiny)).sqrt_()
    return out.mul_(ratio.to(out.dtype)[seg])


def _segment_any(flags: Tensor, sizes: list[int]) -> Tensor:
    """Per segment of ``sizes`` (zero sizes allowed): 1 where any flag is set, as int64."""
    counts = torch.cat([flags.new_zeros(1, dtype=torch.int64), flags.to(torch.int64).cumsum(0)])
    ends = torch.tensor(list(itertools.accumulate(sizes)), device=flags.device)
    return (torch.diff(counts[ends], prepend=counts[:1]) > 0).to(torch.int64)


def _bucket(
    grads: list[Tensor], states: list[dict[str, Any]], key: optim.BucketKey, o: optim.Options
) -> list[Tensor]:
    """One engine call for a bucket; writes the factors back; returns the directions.

    Diagonal-scheme parameters are refreshed as one concatenated vector (elementwise math,
    keep-last-good per entry, a rejection counted for the parameter it belongs to); the first
    step (a per-parameter mean) runs one at a time. A ``step_scale="p2"`` step with ``p ≠ 2``
    needs each parameter's own norm: the engine gives the bucket's p = 2 step, and
    :func:`segment_direction` turns it into root ``p``'s direction at that size per
    parameter."""
    pl, dt = key.plan, states[0]["momentum_buffer"].dtype
    if pl.kind == "diag" and key.first and len(grads) > 1:
        return [u for g, s in zip(grads, states) for u in _bucket([g], [s], key, o)]
    # a p ≠ 2 step scaled to the p = 2 step's norm: per parameter, not per bucket, from the
    # bucket's raw p = 2 step (the reference size; the engine's p only shapes the direction)
    own_norm = pl.kind == "diag" and o.step_scale == "p2" and o.p != 2 and len(grads) > 1
    if pl.kind == "diag":
        G = torch.cat([g.reshape(-1) if g.dtype == dt else g.reshape(-1).to(dt) for g in grads])
    else:
        G = torch.stack([g.reshape(pl.rows, pl.cols) for g in grads])
        G = G if G.dtype == dt else G.to(dt)
    (st,), (ok,), (u,) = optim.precondition_step(
        [_precond(states, pl)],
        [G],
        first=key.first,
        refresh=key.refresh,
        reorth=key.reorth,
        options=optim.Options.trusted({**o.as_dict(), "p": 2.0, "step_scale": "raw"})
        if own_norm
        else o,
    )
    sizes = [g.numel() for g in grads] if pl.kind == "diag" else []
    if key.refresh:
        rejected = [s["rejected"] for s in states]
        if pl.kind == "diag":  # ok per entry: a parameter's count from its own entries
            if not A.known_all(_XP, ok):
                torch._foreach_add_(rejected, _segment_any(~ok, sizes).unbind())
        else:
            torch._foreach_add_(rejected, (~ok).to(torch.int64).unbind())
        torch._foreach_add_([s["refreshes"] for s in states], 1)
    if pl.kind == "diag":
        if key.first or key.refresh:  # into the state's own tensors: one kernel, no allocation
            dst = [s["d"] for s in states]
            torch._foreach_copy_(dst, [d.view(t.shape) for d, t in zip(st.d.split(sizes), dst)])
        if own_norm:
            u = segment_direction(st.d, G, sizes, o.p, ref=u)
        return [x.view(g.shape) for x, g in zip(torch.split(u, sizes), grads)]
    if key.first or key.refresh:  # otherwise the factors are unchanged
        dst, src = [], []
        for k, v in optim.flat_state(st).items():  # stacked: one slice per parameter
            dst += [s[k] for s in states]
            src += v.unbind(0)
        torch._foreach_copy_(dst, src)
    return [x.reshape(g.shape) for x, g in zip(u.unbind(0), grads)]


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
    torch._foreach_add_([s["step"] for s in states], 1)
    for prm, g, u, s, t in zip(params, grads, us, states, steps):
        if fused and prm.dtype == u.dtype:
            fp.append(prm), fu.append(u), fb.append(s["momentum_buffer"])
            continue
        new, slots = optim.update_param(prm, g.to(u.dtype), u, optim.slots_of(s), step=t, options=o)
        prm.copy_(new)
        for k, v in optim.flat_state(slots).items():
            s[k].copy_(v)
    if fp:
        scale = None
        if o.max_update_rms is not None:  # optim.clip_rms: U·c/max(rms(U), c), as U·scale
            c = o.max_update_rms
            size = [math.sqrt(max(u.numel(), 1)) for u in fu]
            rms = torch.stack(torch._foreach_norm(fu))
            rms = rms.div_(torch.tensor(size, dtype=rms.dtype, device=rms.device))
            scale = torch.div(c, rms.clamp_min_(c)).unbind()
        if o.momentum:  # m ← μm + U; optim.update_param steps along U + μm (nesterov) or m
            torch._foreach_mul_(fb, o.momentum)
            if scale is None:
                torch._foreach_add_(fb, fu)
            else:
                torch._foreach_addcmul_(fb, fu, scale)
            if o.nesterov:
                fu = fu if scale is None else torch._foreach_mul(fu, scale)
                fu = torch._foreach_add(fu, fb, alpha=o.momentum)
            else:
                fu = fb
        elif scale is not None:
            fu = torch._foreach_mul(fu, scale)
        if o.weight_decay:
            torch._foreach_mul_(fp, 1 - o.lr * o.weight_decay)
        torch._foreach_add_(fp, fu, alpha=-o.lr)


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
