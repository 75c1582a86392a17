"""The reference optimizers the benchmarks compare against, in one place.

The math is :mod:`spectral_curv.baselines`' (``newton_schulz5``, Muon's orthogonalisation;
``eigh_refresh``, one Shampoo/SOAP refresh + step on bare arrays; re-exported here); the
torch optimizers built on it are here: :class:`MuonFP32` (``torch.optim.Muon``'s update
with fp32 Newton–Schulz), :class:`EighRefresh` (a Shampoo-style eigh optimizer),
:class:`Chain` (optimizers over disjoint parameter sets stepped as one) and
:class:`DecoupledWD`. These are benchmark baselines, not tuned optimizers. torch is imported
only by the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .. import optim
from ..baselines import NS_COEFFS, NS_STEPS, eigh_refresh, newton_schulz5

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
                upd = newton_schulz5(upd.float()).to(p.dtype)
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
        max_precond_dim: int = optim.DEFAULT_MAX_PRECOND_DIM,
    ) -> None:
        super().__init__(params)
        self.lr, self.T, self.precond_warmup, self.p = lr, update_interval, precond_warmup, p
        self.beta, self.momentum, self.eps, self.max_dim = beta, momentum, eps, max_precond_dim
        self.steps = 0

    def refresh_due(self, k: int) -> bool:
        """Whether step ``k`` (0-based) refreshes: ``SpectralKron``'s schedule (math §4.7)."""
        kw = {"precond_warmup": self.precond_warmup, "reorth_interval": 0, "cayley": "exact"}
        return bool(optim.schedule(k, 0, update_interval=self.T, **kw)[1])

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
