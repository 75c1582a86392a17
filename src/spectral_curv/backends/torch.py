"""Torch fast paths: fused GEMM-accumulate for the Cayley products (SPEC §1).

``torch.addmm``/``baddbmm`` compute ``P + P @ Y`` in one kernel without a temporary,
and the exact Cayley uses one LU solve; results equal the generic route to round-off.
"""

from __future__ import annotations

import torch

from . import _loaded, register

_loaded.add("torch")  # imported directly (e.g. by the torch adapter): no lazy import later


def _eye_like(x: torch.Tensor) -> torch.Tensor:
    return torch.eye(x.shape[-1], dtype=x.dtype, device=x.device).expand_as(x)


def _addmm(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if p.ndim == 2:
        return torch.addmm(p, a, b)
    return torch.baddbmm(
        p.reshape(-1, *p.shape[-2:]), a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    ).reshape(p.shape)


@register("cayley_apply_neumann", "torch")
def cayley_apply_neumann(b: torch.Tensor, x: torch.Tensor, terms: int) -> torch.Tensor:
    """``B (I + X)² Π_{k=1..K}(I + X^{2^k})`` with fused multiply-adds."""
    i = _eye_like(x)
    y = x @ x
    p = torch.add(i, x, alpha=2.0).add_(y)
    for k in range(terms):
        p = _addmm(p, p, y)
        if k + 1 < terms:
            y = y @ y
    return b @ p


@register("cayley_apply_quadratic", "torch")
def cayley_apply_quadratic(b: torch.Tensor, x: torch.Tensor, terms: int) -> torch.Tensor:
    """``B (I + 2X + 2X²)`` as one fused ``B + 2 B (X + X²)``."""
    q = torch.add(x, x @ x)
    return _addmm(b, b, q.mul_(2.0))


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
def cayley_apply_exact(b: torch.Tensor, x: torch.Tensor, terms: int) -> torch.Tensor:
    """``B (I − X)⁻¹(I + X)``; low-precision inputs are solved in float32 and cast back."""
    i = _eye_like(x)
    if x.dtype in (torch.float16, torch.bfloat16):
        c = _solve((i - x).float(), (i + x).float()).to(x.dtype)
    else:
        c = _solve(i - x, i + x)
    return b @ c
