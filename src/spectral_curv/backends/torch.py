"""Torch fast paths: fused GEMM-accumulate for the Cayley products (math §1), the damped
rotation generator in place (math §2.4), a blocked ``x xᵀ`` on the CPU, and the optimizer's
per-parameter work over many parameters in a fixed number of kernels (a diagonal bucket's
segment-wise direction, math §4.8; the end of a step with ``torch._foreach_*``, math §4.7).

``torch.addmm``/``baddbmm`` compute ``P + P @ Y`` in one kernel without a temporary,
and the exact Cayley uses one LU solve; results equal the generic route to round-off.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import _loaded, register

_loaded.add("torch")  # imported directly (e.g. by the torch adapter): no lazy import later


def _eye_like(x: torch.Tensor) -> torch.Tensor:
    return torch.eye(x.shape[-1], dtype=x.dtype, device=x.device).expand_as(x)


def _addmm(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``p + a @ b`` in one kernel where the shapes allow it (the same leading axes)."""
    if not p.shape[:-2] == a.shape[:-2] == b.shape[:-2]:  # broadcast leading axes
        return p + a @ b
    if p.ndim == 2:
        return torch.addmm(p, a, b)
    if p.ndim == 3:
        return torch.baddbmm(p, a, b)
    return torch.baddbmm(
        p.reshape(-1, *p.shape[-2:]), a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    ).reshape(p.shape)


@register("known_all", "torch")
def known_all(flags: torch.Tensor) -> bool:
    """``_array.known_all``: read for a plain tensor on the CPU (no device sync) outside
    ``torch.compile``, ``torch.jit.trace`` and ``torch.func`` transforms (whose values a
    Python branch must not depend on)."""
    if (
        type(flags) is not torch.Tensor
        or flags.device.type != "cpu"
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._functorch.is_functorch_wrapped_tensor(flags)
    ):
        return False
    return bool(flags.all())


@register("unstack", "torch")
def unstack(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``_array.unstack``: ``x.unbind(0)`` (array_api_compat's ``unstack`` iterates in Python)."""
    return x.unbind(0)


#: Rows from which the CPU :func:`gram` splits ``x`` in two (blocks of at least half this).
GRAM_BLOCK_ROWS = 256


@register("gram", "torch")
def gram(x: torch.Tensor) -> torch.Tensor:
    """``x xᵀ`` as torch has no ``syrk``: on the CPU, from ``GRAM_BLOCK_ROWS`` rows on, the
    two diagonal blocks (recursively) and one off-diagonal block, mirrored. The same dot
    products as ``x @ xᵀ`` (equal entries), 3/4 of its flops per level: measured on one
    core 0.87 / 0.71 / 0.62 of its time at n = 256 / 512 / 2048. Elsewhere (a GPU, where
    blocking adds launches) ``x @ xᵀ`` itself."""
    n = x.shape[-2]
    if x.device.type != "cpu" or n < GRAM_BLOCK_ROWS:
        return x @ x.mT
    h = n // 2
    top, bottom = x[..., :h, :], x[..., h:, :]
    off = bottom @ top.mT
    return torch.cat([torch.cat([gram(top), off.mT], -1), torch.cat([off, gram(bottom)], -1)], -2)


#: The power iterations' unit start vector per (n, dtype, device) (``maps.guard_scale``'s).
_GUARD_START: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _guard_start(m: torch.Tensor) -> torch.Tensor:
    """The unit start vector for ``m``'s size, dtype and device; kept only for a plain eager
    tensor (not a traced, fake or compiled one)."""
    n, plain = m.shape[-1], type(m) is torch.Tensor and not torch.compiler.is_compiling()
    key = (n, m.dtype, m.device)
    v = _GUARD_START.get(key) if plain else None
    if v is None:
        with torch.inference_mode(False):  # a normal tensor, usable outside inference mode
            v = torch.cos(torch.arange(n, dtype=m.dtype, device=m.device) * 1.7 + 0.3)
            v = v / torch.linalg.vector_norm(v)
        if plain:
            _GUARD_START[key] = v
    return v


def _guard(m: torch.Tensor, max_norm: Any, square: bool) -> torch.Tensor:
    """``maps.guard_scale`` with torch ops: ``min(1, max_norm/ν)``, ``ν = ‖m‖_F`` or, with
    ``square``, ``ν² ≈ ‖m‖₂`` by the same power iterations from the same start:
    ``ν² = ‖m⁴v‖/‖m³v‖``, normalised once midway instead of at every iteration (half the
    dispatched operations; the same estimate to round-off). The norms accumulate in float64,
    where the squares of ``m⁴v``'s entries do not overflow (``‖X‖₂`` up to ~1e9 in float32)."""
    from ..maps import GUARD_POWER_ITERS

    floor = torch.finfo(m.dtype).smallest_normal
    if square:
        # row vectors times m (symmetric, so v m = (m v)ᵀ): a (1×n)·(n×n) product per
        # matrix, which torch's CPU bmm runs 2–3× faster than an elementwise product and
        # sum over m (and without its n×n temporary); the column form (n×n)·(n×1) is ~10×
        # slower than either
        dims, wide = (-2, -1), torch.float64
        w = _guard_start(m)[None, :] @ m
        prev = w
        for k in range(1, GUARD_POWER_ITERS):
            if k == GUARD_POWER_ITERS // 2:
                size = torch.linalg.vector_norm(w, dim=dims, keepdim=True, dtype=wide)
                w = w / size.clamp_min(floor).to(m.dtype)
            prev = w
            w = w @ m
        n_prev = torch.linalg.vector_norm(prev, dim=dims, keepdim=True, dtype=wide)
        n_w = torch.linalg.vector_norm(w, dim=dims, keepdim=True, dtype=wide)
        nu = torch.sqrt(n_w / n_prev.clamp_min(floor))
        return torch.clamp(max_norm / nu.clamp_min(floor), max=1.0).to(m.dtype)
    nu = torch.linalg.vector_norm(m, dim=(-2, -1), keepdim=True)
    return torch.clamp(max_norm / nu.clamp_min(floor), max=1.0)


@register("cayley_apply_neumann", "torch")
def cayley_apply_neumann(
    b: torch.Tensor, x: torch.Tensor, terms: int, max_norm: Any = None
) -> torch.Tensor:
    """``B (I + X)² Π_{k=1..K}(I + X^{2^k})`` with fused multiply-adds."""
    i = _eye_like(x)
    y = gram(x).neg_()  # X² (X skew)
    if max_norm is not None:
        g = _guard(y, max_norm, True)
        x, y = x * g, y * (g * g)
    p = torch.add(i, x, alpha=2.0).add_(y)
    for k in range(terms):
        p = _addmm(p, p, y)
        if k + 1 < terms:
            y = gram(y)  # y symmetric: y yᵀ = y²
    return b @ p


@register("cayley_apply_quadratic", "torch")
def cayley_apply_quadratic(
    b: torch.Tensor, x: torch.Tensor, terms: int, max_norm: Any = None
) -> torch.Tensor:
    """``B (I + 2X + 2X²)`` as one fused ``B + 2 B (X + X²)`` (guarded: ``X ← gX``)."""
    y = gram(x).neg_()  # X² (X skew)
    if max_norm is None:
        return _addmm(b, b, torch.add(x, y).mul_(2.0))
    g = _guard(y, max_norm, True)
    return _addmm(b, b, torch.addcmul(x, y, g).mul_(2.0 * g))


@register("cayley_apply_quartic", "torch")
def cayley_apply_quartic(
    b: torch.Tensor, x: torch.Tensor, terms: int, max_norm: Any = None
) -> torch.Tensor:
    """``B (I + a₁X + cX²)(I + a₂X + cX²)`` as two fused ``P + P·F`` (guarded: ``X ← gX``)."""
    from ..maps import QUARTIC_COEFFS

    a1, a2, c = QUARTIC_COEFFS
    y = gram(x).neg_()  # X² (X skew)
    if max_norm is None:
        p = _addmm(b, b, torch.add(y, x, alpha=a1 / c).mul_(c))
        return _addmm(p, p, torch.add(y, x, alpha=a2 / c).mul_(c))
    g = _guard(y, max_norm, True)  # F = a·gX + c·g²X² = a·g·(X + (c/a)·g·X²)
    p = _addmm(b, b, torch.addcmul(x, y, g, value=c / a1).mul_(a1 * g))
    return _addmm(p, p, torch.addcmul(x, y, g, value=c / a2).mul_(a2 * g))


@register("match_norm", "torch")
def match_norm(
    v: torch.Tensor, ds: list[torch.Tensor], p: Any, ref: torch.Tensor, axes: tuple[int, ...]
) -> torch.Tensor:
    """``maps.match_norm`` in fewer dispatched operations (in-place chains, one norm kernel
    each): the same stabilised ``exp(−(log d − min log d)/p)`` and rescale (math §4.8). The
    norms of a float32/bf16 direction accumulate in float64, where no square of a finite
    entry overflows (the generic route scales by the largest magnitude instead)."""
    out = v if ds else v.clone()
    for d in ds:
        ld = torch.log(d)
        out = out * torch.sub(torch.amin(ld, dim=axes, keepdim=True), ld).div_(p).exp_()
    if out.dtype == torch.float64:  # nothing wider to accumulate in: the generic ratio
        from array_api_compat import array_namespace

        from ..maps import norm_ratio

        return out.mul_(norm_ratio(array_namespace(out), ref, out, axes))
    wide = torch.float64
    n_ref = torch.linalg.vector_norm(ref, dim=axes, keepdim=True, dtype=wide)
    n_out = torch.linalg.vector_norm(out, dim=axes, keepdim=True, dtype=wide)
    ratio = n_ref.div_(n_out.clamp_min_(torch.finfo(wide).smallest_normal))
    return out.mul_(ratio.to(out.dtype))


@register("damped_generator", "torch")
def damped_generator(w: torch.Tensor, d: torch.Tensor, scale: Any) -> torch.Tensor:
    """``maps.rotation_generator``'s damped rule (math §2.4) for a symmetric ``W`` in ten
    dispatched operations and three n×n temporaries (the generic route: eight): with
    ``t = scale·W``, ``X = −δ t / (δ² + 4κ² t² + tiny)``, the same quotient as
    ``−scale·Wδ/(δ² + κ²(2·scale·W)² + tiny)`` (no ``scale²`` to underflow)."""
    from ..maps import DAMPED_KAPPA2

    t = torch.mul(w, scale)
    nd = d.unsqueeze(-2) - d.unsqueeze(-1)  # −δ
    den = torch.mul(t, t).mul_(4.0 * DAMPED_KAPPA2).addcmul_(nd, nd)
    return nd.mul_(t).div_(den.add_(torch.finfo(w.dtype).smallest_normal))


def _solve(a: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.solve``; on the CPU a batch is solved one matrix at a time: torch 2.13's
    batched CPU LU (MKL) intermittently fails with ``Pivots given to lu_solve must all be
    greater or equal to 1`` (MKL: "Parameter 6 was incorrect on entry to SLASWP") when it
    runs on more than one thread, even for ``I`` (seen at n = 256 and 512, batch ≥ 2)."""
    if a.ndim > 2 and a.device.type == "cpu":
        flat_a, flat_r = a.reshape(-1, *a.shape[-2:]), rhs.reshape(-1, *rhs.shape[-2:])
        out = torch.stack([torch.linalg.solve(m, r) for m, r in zip(flat_a, flat_r)])
        return out.reshape(rhs.shape)
    return torch.linalg.solve(a, rhs)


@register("cayley_apply_exact", "torch")
def cayley_apply_exact(
    b: torch.Tensor, x: torch.Tensor, terms: int, max_norm: Any = None
) -> torch.Tensor:
    """``B (I − X)⁻¹(I + X)``; low-precision inputs are solved in float32 and cast back."""
    if max_norm is not None:
        x = x * _guard(x, max_norm, False)
    i = _eye_like(x)
    if x.dtype in (torch.float16, torch.bfloat16):
        c = _solve((i - x).float(), (i + x).float()).to(x.dtype)
    else:
        c = _solve(i - x, i + x)
    return b @ c


@register("segment_direction", "torch")
def segment_direction(
    d: torch.Tensor, g: torch.Tensor, sizes: list[int], p: Any, ref: torch.Tensor | None
) -> torch.Tensor:
    """``optim.segment_direction`` in a fixed number of kernels (scatter-reductions over a
    segment index). As ``maps.match_norm``: ``d^{-1/p}`` relative to the segment's smallest
    ``d`` (no overflow); the norms accumulate in float64, where no square of a float32 entry
    overflows or underflows (float64 entries: each norm scaled by its own largest entry)."""
    n, dev = len(sizes), d.device
    seg = torch.repeat_interleave(
        torch.arange(n, device=dev), torch.tensor(sizes, device=dev), output_size=d.numel()
    )

    def per_segment(x: torch.Tensor, reduce: str, init: float) -> torch.Tensor:
        out = torch.full((n,), init, dtype=x.dtype, device=dev)
        return out.scatter_reduce_(0, seg, x, reduce, include_self=reduce == "sum")

    ld = torch.log(d)
    out = g * torch.sub(per_segment(ld, "amin", math.inf)[seg], ld).div_(p).exp_()
    ref = g * d.rsqrt() if ref is None else ref
    wide = torch.float64
    tiny = torch.finfo(wide).smallest_normal
    if d.dtype == wide:  # nothing wider: each norm from entries scaled by its own largest

        def norm_sq(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            big = per_segment(x.abs(), "amax", 0.0).clamp_min_(tiny)
            return per_segment((x / big[seg]).square_(), "sum", 0.0), big

        (n_ref, m_ref), (n_out, m_out) = norm_sq(ref), norm_sq(out)
        ratio = m_ref.div_(m_out).mul_(n_ref.div_(n_out.clamp_min_(tiny)).sqrt_())
    else:  # float32/bf16: no square overflows or underflows in float64
        n_ref = per_segment(ref.to(wide).square(), "sum", 0.0)
        n_out = per_segment(out.to(wide).square(), "sum", 0.0)
        ratio = n_ref.div_(n_out.clamp_min_(tiny)).sqrt_()
    return out.mul_(ratio.to(out.dtype)[seg])


def _fusable(params: list[torch.Tensor], us: list[torch.Tensor], o: Any) -> list[int]:
    """The parameters whose step :func:`_foreach_update` forms: all of them when there is no
    grafting and ``lr`` is a float, each in its direction's dtype; the others take
    ``optim.update_param``."""
    if isinstance(o.lr, torch.Tensor) or o.graft is not None:
        return []
    return [i for i, (p, u) in enumerate(zip(params, us)) if p.dtype == u.dtype]


def _groups(us: list[torch.Tensor], idx: list[int]) -> list[list[int]]:
    """``idx`` by device and dtype (a foreach kernel takes one of each)."""
    out: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i in idx:
        out.setdefault((us[i].device, us[i].dtype), []).append(i)
    return list(out.values())


@register("update_params", "torch")
def update_params(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    us: list[torch.Tensor],
    slots: list[Any],
    steps: list[int],
    options: Any,
    inplace: bool = False,
) -> tuple[list[torch.Tensor], list[Any]]:
    """``optim.update_params``: where the step reduces to RMS clipping, momentum, decay and
    the update (no grafting, a float ``lr``, the parameter in the direction's dtype), the
    same operations as a few ``torch._foreach_*`` kernels per device and dtype (new
    tensors; the inputs are not changed); the others through ``optim.update_param``.
    ``inplace`` (the torch optimizer's end of a step): the parameters and the slots' tensors
    take the new values instead, the fused ones from the kernels themselves (no new tensors,
    no copies; the same arithmetic, bit for bit); returns them."""
    from ..optim import update_param

    o, new_p, new_s = options, list(params), list(slots)
    fused = _fusable(params, us, o)
    for i in sorted(set(range(len(params))) - set(fused)):
        new_p[i], new_s[i] = update_param(
            params[i], grads[i], us[i], slots[i], step=steps[i], options=o
        )
        if inplace:
            params[i].copy_(new_p[i])
            for dst, src in zip(slots[i], new_s[i]):
                if dst is not None and src is not dst:
                    dst.copy_(src)
            new_p[i], new_s[i] = params[i], slots[i]
    for ids in _groups(us, fused):
        bufs = [slots[i].momentum_buffer for i in ids]
        ws, ms = _foreach_update([params[i] for i in ids], [us[i] for i in ids], bufs, o, inplace)
        for i, w, m in zip(ids, ws, ms):
            new_p[i] = w
            new_s[i] = slots[i] if m is None or inplace else type(slots[i])(m, *slots[i][1:])
    return new_p, new_s


def _foreach_update(
    fp: list[torch.Tensor], fu: list[torch.Tensor], bufs: list[torch.Tensor], o: Any, inplace: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor] | list[None]]:
    """The kernels of :func:`update_params` for parameters of one device and dtype: the new
    parameters and momentum buffers (None without momentum); ``inplace``: into ``fp`` and
    ``bufs``."""
    if inplace and fu[0].dtype in (torch.bfloat16, torch.float16):
        # in-place foreach ops round a Python scalar (μ, 1 − lr·wd) to the tensor's dtype
        # first (0.9 → 0.8984 in bf16); the out-of-place ones do not: the pure form's bits
        new, ms = _foreach_update(fp, fu, bufs, o, False)
        torch._foreach_copy_(fp, new)
        if o.momentum:
            torch._foreach_copy_(bufs, [m for m in ms if m is not None])
            return fp, bufs
        return fp, [None] * len(fp)
    scale = None
    if o.max_update_rms is not None:  # optim.clip_rms: U·c/max(rms(U), c), as U·scale
        c, wide = o.max_update_rms, torch.float64
        size = torch.tensor([math.sqrt(max(u.numel(), 1)) for u in fu], dtype=wide)
        # the norms accumulate in float64: no square of a float32 entry overflows (a huge
        # finite update is clipped, not zeroed)
        rms = torch.stack(torch._foreach_norm(fu, 2, dtype=wide)).div_(size.to(fu[0].device))
        scale = torch.div(c, rms.clamp_min_(c)).to(fu[0].dtype).unbind()
    step: list[torch.Tensor] | tuple[torch.Tensor, ...] = fu
    if scale is not None and not (o.momentum and not o.nesterov):
        step = torch._foreach_mul(fu, scale)
    fb: list[torch.Tensor] = []
    if o.momentum:  # m ← μm + U; optim.update_param steps along U + μm (nesterov) or m
        if inplace:
            fb = bufs
            torch._foreach_mul_(fb, o.momentum)
        else:
            fb = list(torch._foreach_mul(bufs, o.momentum))
        if scale is None:
            torch._foreach_add_(fb, fu)
        else:  # μm + U·scale in one rounding, as the step has always formed it
            torch._foreach_addcmul_(fb, fu, scale)
        step = torch._foreach_add(step, fb, alpha=o.momentum) if o.nesterov else fb
    new = fp
    if o.weight_decay:
        if inplace:
            torch._foreach_mul_(new, 1 - o.lr * o.weight_decay)
        else:
            new = list(torch._foreach_mul(fp, 1 - o.lr * o.weight_decay))
        torch._foreach_add_(new, step, alpha=-o.lr)
    elif inplace:
        torch._foreach_add_(new, step, alpha=-o.lr)
    else:
        new = list(torch._foreach_add(fp, step, alpha=-o.lr))
    return list(new), (list(fb) if fb else [None] * len(fp))


@register("newton_schulz5", "torch")
def newton_schulz5(g: torch.Tensor, steps: int, eps: float) -> torch.Tensor:
    """``baselines.newton_schulz5`` as ``torch.optim.Muon``'s ``addmm`` loop."""
    from ..baselines import NS_COEFFS

    a, b, c = NS_COEFFS
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        upd = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, upd, x, beta=a)
    return x.mT if tall else x
