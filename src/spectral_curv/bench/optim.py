"""Optimizer step-time benchmark: ``SpectralKron`` vs AdamW, Muon and an eigh refresh.

One small causal transformer (token + position embedding, ``depth`` pre-norm
``torch.nn.TransformerEncoderLayer`` blocks of ``width`` with 4 heads and a 4× GELU MLP, a
final LayerNorm and an untied vocabulary head) is trained on synthetic tokens (uniform
random ids, next-token loss; nothing is downloaded). Every optimizer gets its own copy of
the same initial model and sees the same batches; the optimizers take their steps
round-robin (step k of every optimizer before step k + 1 of any), so a burst of load from
elsewhere on a shared machine hits all of them alike, and every ratio is to AdamW's time
measured in the same run.

Per step, three clock readings (``torch.cuda.synchronize()`` before each on CUDA)::

    t0 | zero_grad, forward, loss, backward | t1 | opt.step() | t2
    whole step = t2 − t0,   optimizer only = t2 − t1

The first ``warmup`` steps are not timed (state creation, allocator and kernel warm-up).
A lane (one optimizer) stops being timed once it has ``min_steps`` samples of every step
kind of its schedule (below) and more than ``lane_budget_s`` seconds of timed steps (this
caps bf16 Muon on a CPU at a few steps); each lane's number of timed steps is reported.

Refresh schedules. ``SpectralKron`` and the eigh reference refresh their preconditioner on
step 0, on every step ``k < precond_warmup`` (default 10) and on every ``k % T == 0``, and
only precondition otherwise; a plain median over the timed steps would then report the
cheap step for ``T = 10`` and an arbitrary mix for ``T = 2``. Each timed step is
classified from that schedule as *plain*, *refresh*, or (SpectralKron, every
``reorth_interval``-th refresh) *reorth*, and the headline time is the steady-state
amortized cost ``Σ weight · median(kind)`` with weights ``1 − 1/T``, ``1/T − 1/(T·R)``,
``1/(T·R)``; the plain medians over all timed steps are kept in the JSON too. The
``precond_warmup`` steps are simply more refresh samples (the defaults are kept), and the
assumed schedule is checked against SpectralKron's own ``refreshes`` counter.

Optimizers (``key``: label):

``adamw``
    ``torch.optim.AdamW`` on every parameter (torch's default implementation choice).
``muon_bf16``
    ``torch.optim.Muon`` (its Newton–Schulz runs in bf16, which CPUs execute slowly) on the
    2-D weights inside the blocks + ``torch.optim.AdamW`` on the embeddings, head, norms
    and biases (the usual split; ``torch.optim.Muon`` accepts 2-D parameters only).
``muon_fp32``
    :class:`MuonFP32`, this module's copy of ``torch.optim.Muon``'s update with the
    Newton–Schulz iterations in fp32 (same quintic coefficients, 5 steps, same
    Frobenius-norm scaling, same lr adjustment), + AdamW as above.
``spectral_T{T}_p{p}``
    ``spectral_curv.torch.SpectralKron(update_interval=T, p=p)``, defaults otherwise, on
    every parameter; the first of ``powers`` at every T, the others at the T in
    ``power_intervals`` only (p changes elementwise exponents, not the work).
``eigh_T{T}``
    :class:`EighRefresh`, "eigh refresh (Shampoo-style reference)": EMAs of ``GGᵀ`` and
    ``GᵀG`` every step, ``torch.linalg.eigh`` of both every ``T`` steps, the step
    ``Q_L[(Q_LᵀGQ_R) ⊙ λ_L^{-1/2p} λ_R^{-1/2p}ᵀ]Q_Rᵀ`` every step, same schedule, momentum
    and parameter routing as ``SpectralKron``.

A ``--profile`` pass breaks one refresh and one plain ``opt.step()`` down with
``torch.profiler`` (matmul, eigh, copies, other aten ops, Python + dispatch, aten calls).

Optimizer-state memory: the bytes of every tensor in the optimizer's ``state`` (largest
over the run; for Muon + AdamW the sum of both). On CUDA, the transient peak of
``torch.cuda.max_memory_allocated`` during ``opt.step()`` is recorded too.

This module imports no framework at import time (``torch`` and ``matplotlib`` are
imported by the functions that need them), so the benchmark CLI parses without them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .report import replace_section

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEFAULT_INTERVALS",
    "NS_COEFFS",
    "Config",
    "EighRefresh",
    "MuonFP32",
    "add_arguments",
    "build_model",
    "machine_info",
    "main",
    "markdown_section",
    "newton_schulz5_fp32",
    "optimizer_specs",
    "plot",
    "run",
    "state_bytes",
    "table",
    "write_markdown",
]

DEFAULT_INTERVALS = (1, 2, 10)
DEFAULT_POWERS = (2.0, 1.0)
#: Muon's quintic Newton–Schulz coefficients and step count (torch.optim.Muon defaults).
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
#: The paper's efficiency target (GPU, width ≥ 512, ≥ 8k tokens): whole step ≤ 1.3× AdamW.
TARGET_RATIO = 1.3
EIGH_LABEL = "eigh refresh (Shampoo-style reference)"


# --------------------------------------------------------------------------- config


@dataclass
class Config:
    """One benchmark run (defaults: the documented CPU run)."""

    width: int = 256
    depth: int = 2
    heads: int = 4
    vocab: int = 256
    seq: int = 256
    tokens: int = 2048
    steps: int = 20
    warmup: int = 2
    intervals: tuple[int, ...] = DEFAULT_INTERVALS
    powers: tuple[float, ...] = DEFAULT_POWERS
    #: the powers after the first are timed only at these T (empty: at every T)
    power_intervals: tuple[int, ...] = (2,)
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    batches: int = 4
    #: a lane stops once it has min_steps samples of each step kind and more than
    #: lane_budget_s seconds of timed whole steps (caps bf16 Muon on a CPU)
    min_steps: int = 3
    lane_budget_s: float = 15.0
    quick: bool = False

    @property
    def batch(self) -> int:
        return max(1, self.tokens // self.seq)


QUICK = dict(width=32, depth=1, vocab=64, seq=32, tokens=64, steps=3, warmup=1, min_steps=3)


# --------------------------------------------------------------------------- model


def build_model(cfg: Config) -> Any:
    """The benchmark transformer as a ``torch.nn.ModuleDict`` (call :func:`forward`)."""
    import torch
    from torch import nn

    torch.manual_seed(cfg.seed)
    if cfg.width % cfg.heads:
        raise ValueError(f"width {cfg.width} is not a multiple of heads {cfg.heads}")
    layer = nn.TransformerEncoderLayer(
        cfg.width,
        cfg.heads,
        dim_feedforward=4 * cfg.width,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    model = nn.ModuleDict(
        {
            "embed": nn.Embedding(cfg.vocab, cfg.width),
            "pos": nn.Embedding(cfg.seq, cfg.width),
            "blocks": nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False),
            "norm": nn.LayerNorm(cfg.width),
            "head": nn.Linear(cfg.width, cfg.vocab, bias=False),
        }
    )
    return model.to(device=cfg.device, dtype=getattr(torch, cfg.dtype))


def forward(model: Any, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits ``(batch, seq, vocab)`` of the causal model."""
    import torch

    pos = torch.arange(x.shape[1], device=x.device)
    h = model["embed"](x) + model["pos"](pos)
    h = model["blocks"](h, mask=mask, is_causal=True)
    return model["head"](model["norm"](h))


def _batches(cfg: Config) -> tuple[list[tuple[Any, Any]], Any]:
    """``cfg.batches`` synthetic (input, target) pairs of ``tokens`` ids, and the causal mask."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed + 1)
    out = []
    for _ in range(cfg.batches):
        ids = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq + 1), generator=gen)
        ids = ids.to(cfg.device)
        out.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
    mask = torch.nn.Transformer.generate_square_subsequent_mask(
        cfg.seq, device=torch.device(cfg.device), dtype=getattr(torch, cfg.dtype)
    )
    return out, mask


def _is_hidden_matrix(name: str, p: Any) -> bool:
    """The weights Muon takes: 2-D and inside the transformer blocks."""
    return p.ndim == 2 and name.startswith("blocks.")


# --------------------------------------------------------------------------- optimizers


def newton_schulz5_fp32(g: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> torch.Tensor:
    """``torch.optim.Muon``'s ``_zeropower_via_newtonschulz`` computed in float32, not bf16.

    ``X = G/‖G‖_F`` (transposed if tall), then ``steps`` times ``A = XXᵀ``,
    ``B = bA + cA²``, ``X ← aX + BX`` with Muon's coefficients (3.4445, −4.7750, 2.0315).
    """
    import torch

    a, b, c = NS_COEFFS
    x = g.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        upd = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, upd, x, beta=a)
    return x.T if tall else x


class _Plain:
    """Minimal optimizer protocol shared by this module's reference optimizers."""

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
        self.lr, self.weight_decay, self.momentum, self.nesterov = (
            lr,
            weight_decay,
            momentum,
            nesterov,
        )

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
                upd = newton_schulz5_fp32(upd).to(p.dtype)
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


class _Chain:
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


@dataclass
class Spec:
    """An optimizer of the benchmark.

    ``build(model)`` returns it. ``phases(k)`` names what step ``k`` does ("plain",
    "refresh", or "reorth": a refresh that also re-orthonormalizes ``B``) and ``weights``
    are the steady-state fractions of those phases (None: every step alike)."""

    key: str
    label: str
    family: str
    build: Callable[[Any], Any]
    interval: int | None = None
    p: float | None = None
    phases: Callable[[int], str] | None = None
    weights: dict[str, float] | None = None
    notes: str = ""


def schedule(
    interval: int, precond_warmup: int = 10, reorth_interval: int = 0
) -> tuple[Callable[[int], str], dict[str, float]]:
    """Phase of each step and steady-state phase weights of a refresh schedule.

    SpectralKron's rule: refresh on step 0, on ``k < precond_warmup`` and on
    ``k % interval == 0``; with ``reorth_interval = R > 0`` every R-th refresh also
    re-orthonormalizes (its ``refreshes`` counter ``n`` before the refresh has
    ``(n + 1) % R == 0``). Steady state: a fraction 1/T of the steps refresh, 1/(T·R) of
    them reorth."""
    cache: list[str] = []

    def phase(k: int) -> str:
        n_ref = sum(ph != "plain" for ph in cache)
        while len(cache) <= k:
            j = len(cache)
            if j == 0 or j < precond_warmup or j % interval == 0:
                n_ref += 1
                cache.append(
                    "reorth" if reorth_interval and n_ref % reorth_interval == 0 else "refresh"
                )
            else:
                cache.append("plain")
        return cache[k]

    t = float(interval)
    w = {"plain": 1 - 1 / t, "refresh": 1 / t}
    if reorth_interval:
        w["reorth"] = 1 / (t * reorth_interval)
        w["refresh"] -= w["reorth"]
    return phase, {k: v for k, v in w.items() if v > 0}


def optimizer_specs(cfg: Config, *, precond_warmup: int | None = None) -> list[Spec]:
    """AdamW, the two Muons, SpectralKron at every (T, p) and the eigh reference at every T.

    The first of ``cfg.powers`` is timed at every T, the others at the T in
    ``cfg.power_intervals`` (all T when empty). ``precond_warmup`` overrides SpectralKron's
    default (and the eigh reference's, which follows it) — used by :func:`profile_steps`
    to reach the steady schedule in fewer steps; the timing run keeps the default."""
    import inspect

    import torch

    from ..torch import SpectralKron

    defaults = {k: v.default for k, v in inspect.signature(SpectralKron).parameters.items()}
    warm = defaults["precond_warmup"] if precond_warmup is None else precond_warmup
    reorth = defaults["reorth_interval"] if defaults["cayley"] == "neumann" else 0

    def adamw(model: Any) -> Any:
        return torch.optim.AdamW(model.parameters(), lr=1e-3)

    def muon(inner: Callable[..., Any]) -> Callable[[Any], Any]:
        def build(model: Any) -> Any:
            named = list(model.named_parameters())
            hidden = [p for n, p in named if _is_hidden_matrix(n, p)]
            rest = [p for n, p in named if not _is_hidden_matrix(n, p)]
            return _Chain(inner(hidden, lr=0.02), torch.optim.AdamW(rest, lr=1e-3))

        return build

    specs = [Spec("adamw", "AdamW (torch.optim.AdamW)", "adamw", adamw)]
    if hasattr(torch.optim, "Muon"):  # torch >= 2.9
        specs.append(
            Spec(
                "muon_bf16",
                "Muon (torch.optim.Muon, bf16 NS) + AdamW",
                "muon",
                muon(torch.optim.Muon),
                notes="torch.optim.Muon: Newton–Schulz in bfloat16",
            )
        )
    specs.append(
        Spec(
            "muon_fp32",
            "Muon (fp32 NS, bench copy) + AdamW",
            "muon",
            muon(MuonFP32),
            notes="MuonFP32: torch.optim.Muon's update with Newton–Schulz in float32",
        )
    )
    for T in cfg.intervals:
        phase, weights = schedule(T, warm, reorth)
        for i, p in enumerate(cfg.powers):
            if i and cfg.power_intervals and T not in cfg.power_intervals:
                continue

            def build(model: Any, T: int = T, p: float = p) -> Any:
                # p = 1 divides by the curvature itself: a smaller lr keeps the short
                # run finite (the cost of a step depends on neither lr nor p).
                return SpectralKron(
                    model.parameters(),
                    lr=1e-3 if p >= 2 else 1e-5,
                    update_interval=T,
                    p=p,
                    precond_warmup=warm,
                )

            specs.append(
                Spec(
                    f"spectral_T{T}_p{p:g}",
                    f"SpectralKron T={T} p={p:g}",
                    "spectral",
                    build,
                    T,
                    p,
                    phase,
                    weights,
                )
            )
    for T in cfg.intervals:
        phase, weights = schedule(T, warm)

        def build_eigh(model: Any, T: int = T) -> Any:
            return EighRefresh(model.parameters(), lr=1e-3, update_interval=T, precond_warmup=warm)

        specs.append(
            Spec(f"eigh_T{T}", f"{EIGH_LABEL} T={T}", "eigh", build_eigh, T, 2.0, phase, weights)
        )
    return specs


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


# --------------------------------------------------------------------------- timing


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(
    times: Sequence[float], phases: Sequence[str] | None, weights: dict[str, float] | None
) -> dict[str, Any]:
    """Median of ``times``; with a schedule, per-phase medians and the amortized
    ``Σ_phase weight · median(phase)`` (an unsampled "reorth" phase counts as "refresh";
    any other unsampled phase falls back to the overall median, flagged)."""
    out: dict[str, Any] = {"median_s": _median(times), "min_s": min(times), "n": len(times)}
    if phases is None or weights is None:
        out["amortized_s"] = out["median_s"]
        return out
    per = {ph: [t for t, q in zip(times, phases) if q == ph] for ph in weights}
    out["phase_median_s"] = {ph: _median(v) for ph, v in per.items()}
    out["phase_n"] = {ph: len(v) for ph, v in per.items()}
    est, missing = 0.0, []
    for ph, w in weights.items():
        m = out["phase_median_s"][ph]
        if m is None and ph == "reorth":
            m = out["phase_median_s"].get("refresh")
        if m is None:
            missing.append(ph)
            continue
        est += w * m
    if missing:
        out["amortized_s"] = out["median_s"]
        out["unsampled_phases"] = missing
    else:
        out["amortized_s"] = est
    return out


def _probe() -> float:
    """Seconds of a fixed burst of small CPU ops (a machine-contention indicator)."""
    import torch

    x = torch.ones(64, 1024)
    t = time.perf_counter()
    for _ in range(20):
        x = x * 1.0001
    return time.perf_counter() - t


def run(
    cfg: Config, *, keys: Iterable[str] | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Time every optimizer on its own copy of the model; returns the raw numbers.

    ``keys`` restricts the optimizers (AdamW is always timed: the ratios need it). A lane
    stops being timed once it has ``min_steps`` samples of each step kind of its schedule
    and more than ``lane_budget_s`` of timed whole steps (bf16 Muon on a CPU, chiefly);
    the number of timed steps of each lane is reported."""
    import copy

    import torch

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    cuda = cfg.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_start = time.perf_counter()
    load0 = _loadavg()
    specs = optimizer_specs(cfg)
    if keys is not None:
        want = set(keys) | {"adamw"}
        unknown = want - {s.key for s in specs}
        if unknown:
            raise ValueError(
                f"unknown optimizer keys {sorted(unknown)}; known: {[s.key for s in specs]}"
            )
        specs = [s for s in specs if s.key in want]
    base = build_model(cfg)
    batches, mask = _batches(cfg)
    lanes = []
    for s in specs:
        model = copy.deepcopy(base)
        lanes.append(
            {
                "spec": s,
                "model": model,
                "opt": s.build(model),
                "whole": [],
                "opt_t": [],
                "phases": [],
                "state_bytes": 0,
                "cuda_step_peak": 0,
                "loss": float("nan"),
                "done": False,
                "steps_taken": 0,
            }
        )
    del base
    n_total = cfg.warmup + cfg.steps
    probes = []
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for k in range(n_total):
            x, y = batches[k % len(batches)]
            probes.append(_probe())
            for lane in lanes:
                if lane["done"]:
                    continue
                model, opt, s = lane["model"], lane["opt"], lane["spec"]
                sync()
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                logits = forward(model, x, mask)
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)
                )
                loss.backward()
                sync()
                t1 = time.perf_counter()
                if cuda:
                    before = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                opt.step()
                sync()
                t2 = time.perf_counter()
                lane["steps_taken"] += 1
                if cuda:
                    lane["cuda_step_peak"] = max(
                        lane["cuda_step_peak"], torch.cuda.max_memory_allocated() - before
                    )
                lane["state_bytes"] = max(lane["state_bytes"], state_bytes(opt))
                lane["loss"] = float(loss.detach())
                if k >= cfg.warmup:
                    lane["whole"].append(t2 - t0)
                    lane["opt_t"].append(t2 - t1)
                    lane["phases"].append(s.phases(k) if s.phases else "plain")
                    lane["done"] = _lane_done(lane, cfg)
                del logits, loss
            if progress:
                live = sum(not ln["done"] for ln in lanes)
                progress(
                    f"step {k + 1}/{n_total}"
                    + (" (warm-up)" if k < cfg.warmup else "")
                    + f", {live} optimizers still timed, "
                    f"{time.perf_counter() - t_start:.0f} s"
                )
            if all(ln["done"] for ln in lanes):
                break
    finally:
        if gc_was:
            gc.enable()
    results = [_lane_result(lane, cuda) for lane in lanes]
    ref = next(r for r in results if r["key"] == "adamw")
    for r in results:
        r["ratio_whole"] = r["whole"]["amortized_s"] / ref["whole"]["amortized_s"]
        r["ratio_opt"] = r["opt"]["amortized_s"] / ref["opt"]["amortized_s"]
        r["ratio_state"] = r["state_bytes"] / max(ref["state_bytes"], 1)
    params = list(lanes[0]["model"].parameters())
    config = asdict(cfg)
    config.update(
        batch=cfg.batch,
        n_params=sum(p.numel() for p in params),
        wall_s=time.perf_counter() - t_start,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        param_shapes=[list(p.shape) for p in params],
    )
    machine = machine_info(cfg.device)
    machine["loadavg_start"], machine["loadavg_end"] = load0, _loadavg()
    machine["probe_s"] = probes
    return {"machine": machine, "config": config, "results": results}


def _lane_done(lane: dict[str, Any], cfg: Config) -> bool:
    """Every step timed; or the lane budget spent, with ``min_steps`` samples of each step
    kind of the schedule (the rare reorth kind excepted)."""
    n = len(lane["whole"])
    if n >= cfg.steps:
        return True
    if cfg.lane_budget_s <= 0 or n < cfg.min_steps or sum(lane["whole"]) < cfg.lane_budget_s:
        return False
    kinds = [ph for ph in (lane["spec"].weights or {}) if ph != "reorth"]
    return all(lane["phases"].count(ph) >= cfg.min_steps for ph in kinds)


def _lane_result(lane: dict[str, Any], cuda: bool) -> dict[str, Any]:
    s, opt = lane["spec"], lane["opt"]
    ph = lane["phases"] if s.phases else None
    r: dict[str, Any] = {
        "key": s.key,
        "label": s.label,
        "family": s.family,
        "interval": s.interval,
        "p": s.p,
        "notes": s.notes,
        "whole": summarize(lane["whole"], ph, s.weights),
        "opt": summarize(lane["opt_t"], ph, s.weights),
        "fwd_bwd_median_s": _median([w - o for w, o in zip(lane["whole"], lane["opt_t"])]),
        "state_bytes": lane["state_bytes"],
        "cuda_step_peak_bytes": lane["cuda_step_peak"] if cuda else None,
        "final_loss": lane["loss"],
        "steps_taken": lane["steps_taken"],
        "whole_times_s": lane["whole"],
        "opt_times_s": lane["opt_t"],
        "phases": ph,
        "weights": s.weights,
    }
    if hasattr(opt, "skipped_steps"):  # SpectralKron: sanity counters
        sts = list(opt.state.values())
        r["skipped_steps"] = opt.skipped_steps
        r["rejected_refreshes"] = int(sum(int(st["rejected"]) for st in sts))
        # The schedule this module assumed vs the optimizer's own refresh counter.
        r["refreshes_counted"] = int(sts[0]["refreshes"])
        r["refreshes_expected"] = sum(s.phases(k) != "plain" for k in range(lane["steps_taken"]))
    return r


# --------------------------------------------------------------------------- profile

MATMUL_OPS = frozenset(
    {
        "aten::mm",
        "aten::bmm",
        "aten::addmm",
        "aten::baddbmm",
        "aten::addbmm",
        "aten::dot",
        "aten::vdot",
        "aten::mv",
        "aten::addmv",
    }
)
COPY_OPS = frozenset(
    {"aten::copy_", "aten::cat", "aten::stack", "aten::clone", "aten::_to_copy", "aten::contiguous"}
)
PROFILE_KEYS = ("adamw", "muon_fp32", "spectral_T2_p2", "eigh_T2")


def _categorize(events: Any) -> dict[str, Any]:
    """Self CPU time (s) of a profiled step by category; Python = time inside the step's
    record_function scopes but outside every aten op (interpreter + dispatch)."""
    cat = {"matmul": 0.0, "eigh": 0.0, "copy/stack": 0.0, "other aten": 0.0, "python": 0.0}
    calls = 0
    for e in events:
        t = e.self_cpu_time_total * 1e-6
        if not e.key.startswith("aten::"):
            cat["python"] += t
            continue
        calls += e.count
        if e.key in MATMUL_OPS:
            cat["matmul"] += t
        elif "eigh" in e.key:
            cat["eigh"] += t
        elif e.key in COPY_OPS:
            cat["copy/stack"] += t
        else:
            cat["other aten"] += t
    return {"self_s": cat, "total_s": sum(cat.values()), "aten_calls": calls}


def profile_steps(
    cfg: Config, keys: Iterable[str] = PROFILE_KEYS, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """torch.profiler breakdown of one refresh and one plain ``opt.step()`` per optimizer.

    Each optimizer runs alone on a fresh model, with ``precond_warmup=0`` so that the
    schedule is T-periodic from step 1 (the work of a refresh or plain step is the same as
    with the default); from step 2 on, the first step of each kind is timed unprofiled
    and the next one of the same kind profiled."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    specs = {s.key: s for s in optimizer_specs(cfg, precond_warmup=0)}
    batches, mask = _batches(cfg)
    sync = torch.cuda.synchronize if cfg.device.startswith("cuda") else (lambda: None)
    out = []
    for key in keys:
        if key not in specs:
            continue
        s = specs[key]
        model = build_model(cfg)
        opt = s.build(model)
        phase = s.phases or (lambda k: "plain")
        # Two consecutive occurrences of each phase after the warm-up region.
        todo: dict[str, list[int]] = {}
        k = 2  # precond_warmup = 0 here: steps from 1 on follow the T-periodic schedule
        while any(len(v) < 2 for v in todo.values()) or not todo:
            ph = phase(k)
            if ph != "reorth":
                todo.setdefault(ph, []).append(k)
            k += 1
            if k > 200:
                break
        wanted = {k: ph for ph, ks in todo.items() for k in ks[:2]}
        last = max(wanted)
        walls: dict[str, float] = {}
        for k in range(last + 1):
            x, y = batches[k % len(batches)]
            opt.zero_grad(set_to_none=True)
            logits = forward(model, x, mask)
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)
            ).backward()
            ph = wanted.get(k)
            sync()
            if ph is not None and ph in walls:
                with (
                    profile(activities=[ProfilerActivity.CPU]) as prof,
                    record_function("bench::opt.step"),
                ):
                    opt.step()
                    sync()
                row = {"key": key, "label": s.label, "phase": ph, "wall_s": walls[ph]}
                row.update(_categorize(prof.key_averages()))
                out.append(row)
            else:
                t = time.perf_counter()
                opt.step()
                sync()
                if ph is not None:
                    walls[ph] = time.perf_counter() - t
        if progress:
            progress(f"profiled {key}")
    return out


# --------------------------------------------------------------------------- machine


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU, core counts, torch version and threads (and the GPU's name on CUDA)."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_blas": "MKL" if torch.backends.mkl.is_available() else "non-MKL",
        "thread_env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
            if k in os.environ
        },
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


# --------------------------------------------------------------------------- reports


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{1e3 * x:.1f}"


def _mib(b: int) -> str:
    return f"{b / 2**20:.2f}"


def _phase(r: dict[str, Any], ph: str) -> float | None:
    return r["opt"].get("phase_median_s", {}).get(ph)


def _cols(r: dict[str, Any]) -> list[str]:
    o, w = r["opt"], r["whole"]
    return [
        r["label"],
        _ms(w["amortized_s"]),
        f"{r['ratio_whole']:.2f}",
        _ms(o["amortized_s"]),
        f"{r['ratio_opt']:.1f}",
        _ms(_phase(r, "refresh")),
        _ms(_phase(r, "plain")),
        _mib(r["state_bytes"]),
        f"{r['ratio_state']:.1f}",
        str(o["n"]),
    ]


HEADERS = [
    "optimizer",
    "whole step ms",
    "× AdamW",
    "opt.step ms",
    "× AdamW",
    "refresh step ms",
    "plain step ms",
    "state MiB",
    "× AdamW",
    "n",
]


def _fwd_bwd(data: dict[str, Any]) -> float | None:
    return _median([r["fwd_bwd_median_s"] for r in data["results"]])


def table(data: dict[str, Any]) -> str:
    """Plain-text table, one line per optimizer."""
    rows = [_cols(r) for r in data["results"]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*HEADERS), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    lines += [fmt.format(*r) for r in rows]
    c, m = data["config"], data["machine"]
    probe = m.get("probe_s") or [0.0]
    lines += [
        "",
        f"model: width {c['width']}, depth {c['depth']}, {c['heads']} heads, vocab {c['vocab']},"
        f" {c['batch']}×{c['seq']} = {c['batch'] * c['seq']} tokens, {c['n_params']:,} params,"
        f" {c['dtype']} on {c['device']}; forward+backward ≈ {_ms(_fwd_bwd(data))} ms; "
        f"torch threads {m['torch_threads']}; load {m['loadavg_start']} → {m['loadavg_end']}; "
        f"probe min/median/max {_ms(min(probe))}/{_ms(_median(probe))}/{_ms(max(probe))} ms",
        f"n = timed steps (≤ {c['steps']}, after {c['warmup']} warm-up steps); optimizers "
        "interleaved round-robin; times = medians (refresh schedules: amortized over T); "
        "ratios to AdamW in the same run.",
    ]
    if data.get("profile"):
        lines += ["", profile_table(data["profile"])]
    return "\n".join(lines)


PROFILE_HEADERS = [
    "optimizer",
    "step",
    "wall ms",
    "profiled ms",
    "matmul",
    "eigh",
    "copy/stack",
    "other aten",
    "Python",
    "aten calls",
]


def _profile_cells(r: dict[str, Any]) -> list[str]:
    tot = r["total_s"] or 1.0
    pct = [
        f"{100 * r['self_s'][k] / tot:.0f}%"
        for k in ("matmul", "eigh", "copy/stack", "other aten", "python")
    ]
    return [r["label"], r["phase"], _ms(r["wall_s"]), _ms(r["total_s"]), *pct, str(r["aten_calls"])]


def profile_table(rows: list[dict[str, Any]]) -> str:
    cells = [_profile_cells(r) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(PROFILE_HEADERS)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*PROFILE_HEADERS), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    out += [fmt.format(*c) for c in cells]
    return "\n".join(out)


def _md_table(data: dict[str, Any]) -> list[str]:
    heads = [
        "optimizer",
        "whole step (ms)",
        "× AdamW",
        "opt.step (ms)",
        "× AdamW",
        "opt.step, refresh steps (ms)",
        "opt.step, plain steps (ms)",
        "state (MiB)",
        "× AdamW",
        "timed steps",
    ]
    cuda = any(r.get("cuda_step_peak_bytes") is not None for r in data["results"])
    if cuda:
        heads.append("CUDA peak above live during opt.step (MiB)")
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
    for r in data["results"]:
        cells = _cols(r)
        if r["family"] == "spectral":
            cells[0] = f"**{cells[0]}**"
        if cuda:
            cells.append(_mib(r["cuda_step_peak_bytes"] or 0))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markers() -> tuple[str, str]:
    return (
        "<!-- optim-bench:begin (written by `python -m spectral_curv.bench optim`) -->",
        "<!-- optim-bench:end -->",
    )


def command(cfg: dict[str, Any], *, profile: bool = False, threads: int | None = None) -> str:
    """The command line that reproduces a run of ``cfg`` (defaults left out)."""
    d = Config()
    parts = ["python -m spectral_curv.bench optim"]
    for name in (
        "width",
        "depth",
        "vocab",
        "seq",
        "tokens",
        "steps",
        "warmup",
        "device",
        "dtype",
        "seed",
    ):
        if cfg[name] != getattr(d, name):
            parts.append(f"--{name} {cfg[name]}")
    if tuple(cfg["intervals"]) != d.intervals:
        parts.append("--intervals " + " ".join(map(str, cfg["intervals"])))
    if tuple(cfg["powers"]) != d.powers:
        parts.append("--powers " + " ".join(f"{p:g}" for p in cfg["powers"]))
    if tuple(cfg["power_intervals"]) != d.power_intervals:
        parts.append("--power-intervals " + " ".join(map(str, cfg["power_intervals"])))
    if cfg["lane_budget_s"] != d.lane_budget_s:
        parts.append(f"--lane-budget {cfg['lane_budget_s']:g}")
    if threads:
        parts.append(f"--threads {threads}")
    if profile:
        parts.append("--profile")
    return " ".join(parts)


def markdown_section(
    data: dict[str, Any], *, plot_path: str | None = None, json_path: str | None = None
) -> str:
    """The generated part of ``docs/benchmarks_optim.md`` (between its markers)."""
    m, c = data["machine"], data["config"]
    begin, end = markers()
    res = {r["key"]: r for r in data["results"]}
    dev = m.get("gpu", "GPU") if c["device"] != "cpu" else "CPU"
    lines = [begin, f"## Training-step time, {dev}, {c['dtype']}", ""]
    lines.append(
        f"Model: causal transformer, width {c['width']}, depth {c['depth']}, {c['heads']} "
        f"heads, MLP 4×, vocabulary {c['vocab']} (untied embedding and head), "
        f"{c['n_params']:,} parameters; batch {c['batch']}×{c['seq']} = "
        f"{c['batch'] * c['seq']} synthetic tokens per step. Up to {c['steps']} timed steps "
        f"after {c['warmup']} untimed warm-up steps; the optimizers step round-robin, each on "
        "its own copy of the model, on the same batches. Forward + backward alone: "
        f"≈ {_ms(_fwd_bwd(data))} ms (median over optimizers)."
    )
    lines.append("")
    probe = m.get("probe_s") or [0.0]
    lines.append(
        "**Machine.** "
        + "; ".join(
            filter(
                None,
                [
                    m["cpu"],
                    f"{m['cpus_usable']} usable CPU cores (os.cpu_count() = {m['cpu_count']})",
                    f"torch {m['torch']} ({m['torch_blas']}; "
                    f"intra-op threads: {m['torch_threads']}, "
                    f"inter-op: {m['torch_interop_threads']})",
                    f"GPU {m['gpu']} (CUDA {m['cuda']})" if "gpu" in m else "",
                    f"Python {m['python']}",
                    f"thread env {m['thread_env']}" if m["thread_env"] else "",
                    f"load average {m.get('loadavg_start')} → {m.get('loadavg_end')}",
                    f"contention probe (20 small elementwise ops, once per round) min/median/max "
                    f"{_ms(min(probe))}/{_ms(_median(probe))}/{_ms(max(probe))} ms",
                    f"{c['date']}, timing run {c['wall_s']:.0f} s"
                    + (f" + profile {c['profile_wall_s']:.0f} s" if "profile_wall_s" in c else ""),
                ],
            )
        )
        + "."
    )
    lines.append("")
    cmd = command(c, profile=bool(data.get("profile")), threads=c.get("threads"))
    lines.append(
        f"Reproduce: `{cmd}`"
        + (f"; raw numbers: [`{json_path}`]({json_path})" if json_path else "")
        + "."
    )
    lines.append("")
    lines.extend(_md_table(data))
    lines.append("")
    lines.append(
        "*Whole step* = zero_grad + forward + loss + backward + `opt.step()`; *opt.step* = "
        "`opt.step()` alone. Medians over the timed steps; for the refresh schedules "
        "(SpectralKron, eigh) the steady-state amortized cost Σ weight · median over the "
        "step kinds (plain 1 − 1/T, refresh 1/T; SpectralKron's refreshes that also "
        "re-orthonormalize, one in `reorth_interval` = 10, are a third kind), with the "
        "refresh-step and plain-step medians shown. The default `precond_warmup=10` makes "
        "every step below 10 a refresh step: those are refresh samples. *State* = bytes of "
        "the tensors in the optimizer's state (Muon rows: Muon + its AdamW). × AdamW = ratio "
        "to AdamW's number from the same run. *Timed steps*: a lane whose timed steps "
        f"exceed {c['lane_budget_s']:g} s stops once it has ≥ {c['min_steps']} samples of each "
        "step kind (plain, refresh)."
    )
    lines.append("")
    if plot_path:
        lines.append(f"![step time per optimizer]({plot_path})")
        lines.append("")
    if data.get("profile"):
        lines.extend(_md_profile(data["profile"]))
    lines.extend(_remarks(data, res))
    lines.append(end)
    return "\n".join(lines) + "\n"


def _md_profile(rows: list[dict[str, Any]]) -> list[str]:
    heads = [
        "optimizer",
        "step",
        "wall (ms)",
        "profiled (ms)",
        "matmul",
        "eigh",
        "copy/stack",
        "other aten ops",
        "Python + dispatch",
        "aten calls",
    ]
    out = [
        "**Where `opt.step()` spends its time** (torch.profiler; each optimizer runs "
        "alone with `precond_warmup=0`, so its schedule is T-periodic from step 1; one "
        "step of each kind from step 2 on; self CPU time by category as a share of the "
        "profiled step; 'wall' is the previous step of the same kind timed without the "
        "profiler; 'Python + dispatch' is time inside `opt.step()` outside every aten op; "
        "the profiler itself adds a few µs per op).",
        "",
        "| " + " | ".join(heads) + " |",
        "|---|---|" + "---:|" * (len(heads) - 2),
    ]
    out += ["| " + " | ".join(_profile_cells(r)) + " |" for r in rows]
    out.append("")
    return out


def _remarks(data: dict[str, Any], res: dict[str, dict[str, Any]]) -> list[str]:
    c = data["config"]
    out = ["**Remarks generated from this run.**", ""]
    spec = [r for r in data["results"] if r["family"] == "spectral"]
    eigh = {r["interval"]: r for r in data["results"] if r["family"] == "eigh"}
    pmax = max(c["powers"]) if c["powers"] else None
    for r in spec:
        if r["p"] != pmax:
            continue
        e = eigh.get(r["interval"])
        vs = ""
        if e:
            q = r["opt"]["amortized_s"] / e["opt"]["amortized_s"]
            vs = f"; {q:.2f}× the eigh reference's opt.step at the same T"
        out.append(
            f"- SpectralKron T={r['interval']} p={r['p']:g}: whole step "
            f"{r['ratio_whole']:.2f}× AdamW, opt.step {r['ratio_opt']:.1f}× AdamW{vs}."
        )
    if "muon_bf16" in res and "muon_fp32" in res:
        b, f = res["muon_bf16"], res["muon_fp32"]
        out.append(
            "- Muon: torch.optim.Muon (Newton–Schulz in bf16) opt.step "
            f"{_ms(b['opt']['amortized_s'])} ms vs the fp32 Newton–Schulz copy "
            f"{_ms(f['opt']['amortized_s'])} ms"
            + (
                ": bf16 matmuls are slow on this CPU; on a GPU the bf16 row is the one that counts."
                if c["device"] == "cpu"
                else "."
            )
        )
    ps = sorted({r["p"] for r in spec})
    if len(ps) > 1:
        pairs = []
        for T in c["intervals"]:
            row = {r["p"]: r for r in spec if r["interval"] == T}
            if len(row) == len(ps):
                pairs.append(
                    f"T={T}: "
                    + " vs ".join(f"{_ms(row[p]['opt']['amortized_s'])} ms (p={p:g})" for p in ps)
                )
        out.append(
            "- The root p changes only elementwise exponents, not the work: opt.step "
            + "; ".join(pairs)
            + "."
        )
    bad = [
        r["key"]
        for r in spec
        if r.get("refreshes_counted") is not None
        and r["refreshes_counted"] != r["refreshes_expected"]
    ]
    if bad:
        out.append(
            f"- WARNING: the refresh schedule assumed here disagrees with the "
            f"optimizer's own counter for {bad}: the phase split is wrong for them."
        )
    nonfinite = [r["key"] for r in data["results"] if not math.isfinite(r["final_loss"])]
    if nonfinite:
        out.append(f"- WARNING: non-finite final loss for {nonfinite}.")
    tokens = c["batch"] * c["seq"]
    if c["device"] == "cpu" or c["width"] < 512 or tokens < 8192:
        out.append(
            f"- The paper's efficiency target (whole step ≤ {TARGET_RATIO}× AdamW) is stated "
            "for a GPU, width ≥ 512 and ≥ 8k tokens per step; this run "
            f"({c['device']}, width {c['width']}, {tokens} tokens) is outside that regime, so "
            "it neither tests nor refutes the target. At small width and batch the forward "
            "+ backward is cheap next to a Kronecker preconditioner's O(n³) factor work, so "
            "every second-order method looks worse here than at scale."
        )
    out.append(
        "- Timing only: learning rates are untuned and no convergence comparison is "
        "made (the final losses in the JSON are a finiteness check)."
    )
    out.append("")
    return out


def write_markdown(path: str | os.PathLike[str], section: str) -> None:
    """Replace the section of ``path`` between the markers, or append it."""
    begin, end = markers()
    replace_section(path, section, begin, end, "# Optimizer step-time benchmark\n\n")


def plot(data: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Horizontal bars per optimizer: forward+backward and opt.step (stacked), in ms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    c, m = data["config"], data["machine"]
    rows = data["results"]
    colors = {"adamw": "0.45", "muon": "C1", "spectral": "C0", "eigh": "C3"}
    fig, ax = plt.subplots(figsize=(9.5, 0.4 * len(rows) + 2.0), dpi=130)
    ys = list(range(len(rows)))[::-1]
    totals = sorted(1e3 * r["whole"]["amortized_s"] for r in rows)
    # One bar far beyond the rest (bf16 Muon on a CPU) is cut so the others stay readable.
    cap = totals[-2] * 1.3 if len(totals) > 2 and totals[-1] > 2.5 * totals[-2] else None
    for y, r in zip(ys, rows):
        o = 1e3 * r["opt"]["amortized_s"]
        fb = 1e3 * r["whole"]["amortized_s"] - o
        label = f"  {r['ratio_whole']:.2f}×  ({r['ratio_opt']:.0f}×)"
        end = fb + o
        if cap is not None and end > cap:
            o, label = cap - fb, f"  bar cut: {end:.0f} ms;" + label
            end = cap
        ax.barh(y, fb, color="0.85", edgecolor="0.6", lw=0.5)
        ax.barh(
            y,
            o,
            left=fb,
            color=colors[r["family"]],
            edgecolor="0.3",
            lw=0.5,
            hatch="//" if end == cap else None,
        )
        ax.text(end, y, label, va="center", fontsize=7.5)
    ax.set_yticks(ys)
    ax.set_yticklabels([r["label"] for r in rows], fontsize=8)
    ax.set_xlabel("time per training step [ms]   (median; refresh schedules amortized over T)")
    ax.set_xlim(0, (cap if cap is not None else totals[-1]) * (1.45 if cap else 1.22))
    handles = [Patch(facecolor="0.85", edgecolor="0.6", label="zero_grad + forward + backward")]
    names = {
        "adamw": "opt.step(): AdamW",
        "muon": "opt.step(): Muon + AdamW",
        "spectral": "opt.step(): SpectralKron",
        "eigh": f"opt.step(): {EIGH_LABEL}",
    }
    for fam in dict.fromkeys(r["family"] for r in rows):
        handles.append(Patch(facecolor=colors[fam], edgecolor="0.3", label=names[fam]))
    ax.legend(handles=handles, fontsize=7.5, loc="lower right", frameon=True)
    where = (
        f"{m.get('gpu')}"
        if c["device"] != "cpu"
        else f"CPU, {m['cpus_usable']} cores, torch threads: {m['torch_threads']}"
    )
    ax.set_title(
        f"Training-step time: width {c['width']}, depth {c['depth']}, "
        f"{c['batch'] * c['seq']} tokens/step, {c['dtype']}, {where}\n"
        "labels: whole step × AdamW  (opt.step × AdamW), same run",
        fontsize=9,
    )
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``optim`` subcommand's options (imports nothing heavy)."""
    d = Config()
    p.add_argument("--width", type=int, default=None, help=f"model width (default {d.width})")
    p.add_argument("--depth", type=int, default=None, help=f"blocks (default {d.depth})")
    p.add_argument(
        "--vocab", type=int, default=None, help=f"vocabulary size (default {d.vocab}, byte-level)"
    )
    p.add_argument(
        "--seq", type=int, default=None, help=f"sequence length (default min({d.seq}, tokens))"
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=None,
        help=f"tokens per step = batch × seq (default {d.tokens})",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"timed steps per optimizer, at most (default {d.steps})",
    )
    p.add_argument(
        "--warmup", type=int, default=None, help=f"untimed warm-up steps (default {d.warmup})"
    )
    p.add_argument(
        "--intervals",
        type=int,
        nargs="+",
        default=None,
        metavar="T",
        help="update_interval of SpectralKron and the eigh reference "
        "(default " + " ".join(map(str, d.intervals)) + ")",
    )
    p.add_argument(
        "--powers",
        type=float,
        nargs="+",
        default=None,
        metavar="P",
        help="SpectralKron roots p (default " + " ".join(f"{x:g}" for x in d.powers) + ")",
    )
    p.add_argument(
        "--power-intervals",
        type=int,
        nargs="*",
        default=None,
        metavar="T",
        help="time the powers after the first only at these T (default "
        + " ".join(map(str, d.power_intervals))
        + "; none given: every T)",
    )
    p.add_argument(
        "--lane-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"stop timing an optimizer after this many seconds of timed steps "
        f"(once it has {d.min_steps} samples of each step kind; default "
        f"{d.lane_budget_s:g}; 0: never)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="KEY",
        help="time only these optimizer keys (AdamW always), e.g. adamw muon_bf16 "
        "muon_fp32 spectral_T2_p2 eigh_T2",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="model parameter dtype (default float32)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile one refresh and one plain opt.step() of AdamW, Muon "
        "(fp32 NS), SpectralKron and the eigh reference (first T given)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: width 32, depth 1, 64 tokens, 3 steps; writes nothing unless asked",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="MD",
        help="markdown file (default docs/benchmarks_optim.md; not with --quick)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="bar chart (default docs/img/optim_step_time.png; not with --quick)",
    )
    p.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="raw numbers (default: --out with .json; '-' for stdout)",
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def config_from_args(args: argparse.Namespace) -> Config:
    """The :class:`Config` of parsed ``optim`` arguments (``--quick`` shrinks the defaults)."""
    base: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("width", "depth", "vocab", "seq", "tokens", "steps", "warmup"):
        v = getattr(args, name)
        if v is not None:
            base[name] = v
    if args.lane_budget is not None:
        base["lane_budget_s"] = args.lane_budget
    cfg = Config(**base, device=args.device, dtype=args.dtype, seed=args.seed, quick=args.quick)
    if args.seq is None:
        cfg.seq = min(cfg.seq, cfg.tokens)
    if args.intervals:
        cfg.intervals = tuple(args.intervals)
    if args.powers:
        cfg.powers = tuple(args.powers)
    if args.power_intervals is not None:
        cfg.power_intervals = tuple(args.power_intervals)
    if cfg.tokens % cfg.seq:
        raise SystemExit(f"--tokens {cfg.tokens} must be a multiple of --seq {cfg.seq}")
    return cfg


def main(args: argparse.Namespace) -> int:
    """Entry point of ``python -m spectral_curv.bench optim`` (parsed ``args``)."""
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    if args.no_write:
        args.out = args.plot = args.json = None
    elif not args.quick:
        args.out = args.out or "docs/benchmarks_optim.md"
        args.plot = args.plot or "docs/img/optim_step_time.png"
    if args.json is None and args.out:
        args.json = str(Path(args.out).with_suffix(".json"))

    def progress(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    load = _loadavg()
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not args.quick and load and ncpu and load[0] > 0.5 * ncpu:
        print(
            f"warning: load average {load[0]} on {ncpu} usable cores: other jobs share this "
            f"machine; with {torch.get_num_threads()} torch threads every parallel op can "
            "wait on a descheduled thread (try --threads 1 for steadier ratios)",
            file=sys.stderr,
        )
    data = run(cfg, keys=args.only, progress=progress)
    data["config"]["threads"] = args.threads
    if args.profile:
        T = cfg.intervals[0] if 2 not in cfg.intervals else 2
        p = cfg.powers[0]
        keys = ("adamw", "muon_fp32", f"spectral_T{T}_p{p:g}", f"eigh_T{T}")
        t = time.perf_counter()
        data["profile"] = profile_steps(cfg, keys, progress=progress)
        data["config"]["profile_wall_s"] = time.perf_counter() - t
    print(table(data))
    if args.json == "-":
        print(json.dumps(data, indent=1))
    elif args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    plot_path = args.plot
    if plot_path:
        try:
            plot(data, plot_path)
            print(f"wrote {plot_path}", file=sys.stderr)
        except ImportError as e:
            print(f"no plot ({e}); pip install matplotlib", file=sys.stderr)
            plot_path = None
    if args.out:
        base = Path(args.out).resolve().parent

        def rel(path: str | None) -> str | None:
            if path is None or path == "-":
                return None
            return os.path.relpath(Path(path).resolve(), base)

        write_markdown(
            args.out, markdown_section(data, plot_path=rel(plot_path), json_path=rel(args.json))
        )
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
