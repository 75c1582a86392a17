"""The reference methods the benchmarks compare against, in one place.

``newton_schulz5`` (Muon's orthogonalisation), ``eigh_refresh`` (one Shampoo/SOAP refresh +
step on bare arrays), and torch optimizers: :class:`MuonFP32` (``torch.optim.Muon``'s update
with fp32 Newton–Schulz), :class:`EighRefresh` (a Shampoo-style eigh optimizer),
:class:`Chain` (optimizers over disjoint parameter sets stepped as one) and
:class:`DecoupledWD`. These are benchmark baselines, not tuned optimizers. torch is imported
only by the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = [
    "NS_COEFFS",
    "NS_STEPS",
    "Chain",
    "DecoupledWD",
    "EighRefresh",
    "MuonFP32",
    "eigh_refresh",
    "newton_schulz5",
    "state_bytes",
]

#: Muon's quintic Newton–Schulz coefficients and step count (torch.optim.Muon, Keller
#: Jordan's muon.py).
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def newton_schulz5(g: Any, steps: int = NS_STEPS, eps: float = 1e-7) -> Any:
    """Muon's quintic Newton–Schulz orthogonalisation of a matrix ``g``, in float32.

    ``X = G/‖G‖_F`` (transposed if tall), then ``steps`` times ``A = XXᵀ``,
    ``B = bA + cA²``, ``X ← aX + BX`` with (a, b, c) = :data:`NS_COEFFS`: 3 products a step.
    A torch tensor runs ``torch.optim.Muon``'s ``addmm`` loop (cast to fp32, not bf16); any
    other array the same products through its array-API namespace, in its own dtype.
    """
    a, b, c = NS_COEFFS
    if _is_torch(g):
        import torch

        x = g.float()
        tall = x.size(0) > x.size(1)
        x = x.T if tall else x
        x = x / x.norm().clamp(min=eps)
        for _ in range(steps):
            gram = x @ x.T
            upd = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, upd, x, beta=a)
        return x.T if tall else x
    from .._array import array_namespace

    xp = array_namespace(g)
    tall = g.shape[-2] > g.shape[-1]
    x = g.mT if tall else g
    x = x / (xp.sqrt(xp.sum(x * x)) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        upd = b * gram + c * (gram @ gram)
        x = a * x + upd @ x
    return x.mT if tall else x


def eigh_refresh(
    xp: Any, left: Any, right: Any, g: Any, *, p: float = 2.0, beta: float = 0.95
) -> tuple[Any, Any]:
    """Shampoo/SOAP-style refresh + step: accumulate both factors, ``eigh`` both, precondition.

    Returns ``((L, R, Q_L, λ_L, Q_R, λ_R), step)`` with
    ``step = Q_L [(Q_Lᵀ G Q_R) ⊙ λ_L^{-1/2p} λ_R^{-1/2p}ᵀ] Q_Rᵀ`` (``(L ⊗ R)^{-1/2p}`` per
    factor, i.e. ``S^{-1/p}`` for ``S = L ⊗ R``).
    """
    left = beta * left + (1.0 - beta) * (g @ g.mT)
    right = beta * right + (1.0 - beta) * (g.mT @ g)
    lam_l, q_l = xp.linalg.eigh(left)
    lam_r, q_r = xp.linalg.eigh(right)
    e = -1.0 / (2.0 * p)
    core = (q_l.mT @ g @ q_r) * (lam_l**e)[:, None] * (lam_r**e)[None, :]
    return (left, right, q_l, lam_l, q_r, lam_r), q_l @ core @ q_r.mT


def state_bytes(opt: Any) -> int:
    """Bytes of every tensor in ``opt.state`` (nested dicts, lists and tuples included)."""
    import torch

    def walk(x: Any) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, dict):
            return sum(walk(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        return 0

    return sum(walk(s) for s in opt.state.values())


class _Plain:
    """Minimal optimizer protocol shared by the reference optimizers."""

    def __init__(self, params: Iterable[Any]) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.state: dict[Any, dict[str, Any]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


class MuonFP32(_Plain):
    """``torch.optim.Muon``'s update (defaults: Nesterov momentum 0.95, weight decay 0.1,
    lr × √max(1, rows/cols)) with the Newton–Schulz iterations in fp32 (benchmark copy)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        *,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
    ) -> None:
        super().__init__(params)
        if any(p.ndim != 2 for p in self.params):
            raise ValueError("MuonFP32 takes 2-D parameters only")
        self.lr, self.weight_decay = lr, weight_decay
        self.momentum, self.nesterov = momentum, nesterov

    def step(self) -> None:
        import torch

        with torch.no_grad():
            for p in self.params:
                if p.grad is None:
                    continue
                st = self.state.setdefault(p, {})
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = st["momentum_buffer"]
                buf.lerp_(p.grad, 1 - self.momentum)
                upd = p.grad.lerp(buf, self.momentum) if self.nesterov else buf
                upd = newton_schulz5(upd).to(p.dtype)
                lr = self.lr * math.sqrt(max(1.0, p.shape[0] / p.shape[1]))
                p.mul_(1 - self.lr * self.weight_decay)
                p.add_(upd, alpha=-lr)


class EighRefresh(_Plain):
    """eigh refresh (Shampoo-style reference) for timing; not a tuned optimizer.

    Matrix ``W ∈ R^{r×c}`` (order ≥ 3 flattened to ``(shape[0], rest)``) with gradient ``G``:
    every step ``L ← βL + (1−β)GGᵀ``, ``R ← βR + (1−β)GᵀG`` (a side longer than
    ``max_precond_dim`` keeps only the diagonal, as in ``SpectralKron``); on refresh steps
    (step 0, ``k < precond_warmup``, ``k % T == 0``) ``Q, λ = eigh(·)`` of both factors
    (fp32, eigenvalues floored at ``eps·λ_max``); every step
    ``U = Q_L[(Q_LᵀGQ_R) ⊙ λ_L^{-1/2p} λ_R^{-1/2p}ᵀ]Q_Rᵀ``, i.e. ``(L ⊗ R)^{-1/2p}`` vec G
    (Shampoo's ``L^{-1/4} G R^{-1/4}`` at p = 2). Order ≤ 1: ``v ← βv + (1−β)g²``,
    ``U = g / v^{1/p}``. Then heavy-ball momentum and the step, as in ``SpectralKron``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        *,
        update_interval: int = 2,
        precond_warmup: int = 10,
        p: float = 2.0,
        beta: float = 0.95,
        momentum: float = 0.9,
        eps: float = 1e-6,
        max_precond_dim: int = 4096,
    ) -> None:
        super().__init__(params)
        self.lr, self.T, self.precond_warmup, self.p = lr, update_interval, precond_warmup, p
        self.beta, self.momentum, self.eps, self.max_dim = beta, momentum, eps, max_precond_dim
        self.steps = 0

    def refresh_due(self, k: int) -> bool:
        return k == 0 or k < self.precond_warmup or k % self.T == 0

    def _init(self, p: Any) -> dict[str, Any]:
        import torch

        kw = {"dtype": torch.float32, "device": p.device}
        st: dict[str, Any] = {"momentum_buffer": torch.zeros(p.shape, **kw)}
        if p.ndim < 2:
            st["v"] = torch.zeros(p.shape, **kw)
            return st
        r, c = p.shape[0], p.numel() // p.shape[0]
        for side, n in (("L", r), ("R", c)):
            if n > self.max_dim:
                st[side] = torch.zeros(n, **kw)  # diagonal statistic
            else:
                st[side] = torch.zeros(n, n, **kw)
                st["Q" + side] = torch.eye(n, **kw)
            st["lam" + side] = torch.ones(n, **kw)
        return st

    def _root(self, st: dict[str, Any], side: str) -> None:
        import torch

        s = st[side]
        if s.ndim == 1:
            lam = s
        else:
            lam, st["Q" + side] = torch.linalg.eigh(s)
        floor = self.eps * lam.max().clamp_min(0) + torch.finfo(lam.dtype).tiny
        st["lam" + side] = lam.clamp_min(floor)

    def step(self) -> None:
        import torch

        k = self.steps
        refresh = self.refresh_due(k)
        b, e = self.beta, -1.0 / (2.0 * self.p)
        with torch.no_grad():
            for p in self.params:
                if p.grad is None:
                    continue
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = self._init(p)
                g = p.grad.float()
                if p.ndim < 2:
                    st["v"].mul_(b).addcmul_(g, g, value=1 - b)
                    u = g / (st["v"] + 1e-30) ** (1.0 / self.p)
                else:
                    g = g.reshape(p.shape[0], -1)
                    for side, gg in (("L", g), ("R", g.T)):
                        s = st[side]
                        if s.ndim == 1:
                            s.mul_(b).add_(gg.square().sum(1), alpha=1 - b)
                        else:
                            s.mul_(b).addmm_(gg, gg.T, alpha=1 - b)
                        if refresh:
                            self._root(st, side)
                    core = g
                    if "QL" in st:
                        core = st["QL"].T @ core
                    if "QR" in st:
                        core = core @ st["QR"]
                    core = core * (st["lamL"] ** e)[:, None] * (st["lamR"] ** e)[None, :]
                    if "QL" in st:
                        core = st["QL"] @ core
                    if "QR" in st:
                        core = core @ st["QR"].T
                    u = core.reshape(p.shape)
                buf = st["momentum_buffer"].mul_(self.momentum).add_(u)
                p.sub_((buf * self.lr).to(p.dtype))
        self.steps += 1


class Chain:
    """Several optimizers over disjoint parameter sets, stepped as one (Muon + AdamW)."""

    def __init__(self, *opts: Any) -> None:
        self.opts = opts

    @property
    def state(self) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for o in self.opts:
            out.update(o.state)
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.opts:
            o.step()


class DecoupledWD:
    """Wrap an optimizer without weight decay: ``p ← (1 − lr·wd) p`` before its step."""

    def __init__(self, opt: Any, params: list[Any], lr: float, weight_decay: float) -> None:
        self.opt, self.params, self.factor = opt, params, 1.0 - lr * weight_decay

    @property
    def state(self) -> dict[Any, Any]:
        return self.opt.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        import torch

        if self.factor != 1.0:
            with torch.no_grad():
                for p in self.params:
                    p.mul_(self.factor)
        self.opt.step()
