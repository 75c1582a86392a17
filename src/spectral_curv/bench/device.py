"""GPU benchmark (``bench device``): the preconditioner, a whole training step and the CuPy
backend on one accelerator, in one short run (≤ 5 minutes on one H100/H200).

Sections (each measurement in its own ``try``: an error, e.g. an out-of-memory at
n = 8192, is recorded in the JSON and the tables and the run goes on; past ``--budget-s``
the remaining measurements are marked ``skipped (budget)``):

``precond``
    One refresh step as ``SpectralKron`` runs it (``optim.refresh_and_direction`` with the
    default ``Options``), and a plain step
    (``optim.direction`` only), with bf16 and fp32 factors, for n×n layers (n = 1024, 2048,
    4096, 8192) and a 768×3072 one; beside ``torch.linalg.eigh`` of both factors in fp32
    (:func:`.baselines.eigh_refresh`, Shampoo/SOAP's refresh) and Muon's 5 Newton–Schulz
    steps: bf16 as ``torch.optim.Muon`` runs them, fp32 as :func:`.baselines.newton_schulz5`.
    Times are medians of repeats after a warm-up (CUDA events around each call, the device
    synchronised before it; ``time.perf_counter`` off CUDA), also given in
    matmul-equivalents: ÷ one ``(r×c)·(c×c)`` product (n×n×n for a square layer) in the
    same dtype, measured in the same run.
``batched``
    Same-shaped layers as one stacked call (``optim.init(plan, shape, batch=(12,))``):
    12 × 768×768 and 12 × 768×3072, against the same 12 layers one call at a time and
    Muon's Newton–Schulz per layer (what ``torch.optim.Muon`` does).
``step``
    Whole training step (``zero_grad``, forward, backward, ``step``; bf16 autocast, fp32
    weights) of a GPT-2-small-like stack (:func:`.step.build_model`: width 768, 12 heads,
    4 pre-norm blocks (GPT-2 small has 12: the optimizer's share per block is the same),
    vocabulary 8192, 8 × 1024 = 8192 tokens a step) with ``SpectralKron`` at
    ``update_interval`` T = 1, 2, 10 (and T = 2 with bf16 factors), ``torch.optim.AdamW(
    fused=True)``, ``torch.optim.Muon`` on the blocks' 2-D weights + fused AdamW on the rest
    (where torch has it) and heavyball's SOAP (where it imports; ``torch.compile`` off).
    The first 12 steps are not timed (SpectralKron's ``precond_warmup`` refreshes every
    step); the mean of the next 20 is the amortised step (20 is a multiple of every T).
    Peak memory: ``torch.cuda.max_memory_allocated``, reset before each optimizer's model
    copy is made.
``cupy``
    ``kron.update_gop`` + ``kron.precondition`` (float32) on CuPy arrays (the generic
    array-API route) and on torch CUDA tensors (torch's fast paths) from identical inputs:
    the largest relative difference of every output and the times. Skipped without CuPy or
    a GPU (a ``--tiny`` dry run times NumPy in CuPy's place, to exercise the code).
``targets``
    PASS/FAIL: the refresh step ≥ 10× faster than the fp32 eigh refresh at n ≥ 2048 (both
    factor dtypes); the refresh step no slower than Muon's NS5 in the same dtype at the same
    size; the whole step at T = 2 ≤ 1.3× AdamW's.

Writes ``gpu.md`` + ``gpu.json`` to the output folder (``--write-docs``:
``docs/benchmarks_gpu.md`` + ``docs/benchmarks_gpu.json``).

GPU benchmark
    On a machine with a CUDA GPU and a CUDA build of torch, from the repository root:
    ``python -m spectral_curv.bench device --write-docs`` (or ``nox -s bench-gpu``, which
    installs the benchmark extras and CuPy first). The published numbers
    (``docs/benchmarks_gpu.md``) are missing until such a run happens: the CPU machines
    this project is developed on have no GPU. ``python -m spectral_curv.bench device
    --device cpu --tiny`` is a dry run of the same code at tiny sizes (< 30 s on a CPU).

torch is imported only by the functions that need it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..baselines import NS_COEFFS, NS_STEPS, eigh_refresh, newton_schulz5
from . import report

__all__ = [
    "DTYPES",
    "SECTIONS",
    "Config",
    "add_arguments",
    "config_from_args",
    "main",
    "make_inputs",
    "muon_ns5_bf16",
    "refresh_step",
    "run",
]

SECTIONS = ("precond", "batched", "step", "cupy")
DTYPES = ("bfloat16", "float32")
SHORT_DTYPE = {"bfloat16": "bf16", "float32": "fp32"}
BEGIN, END = report.markers("gpu")

#: Targets (issue 17): refresh ≥ EIGH_SPEEDUP× faster than the fp32 eigh refresh at
#: n ≥ EIGH_MIN_N; refresh ≤ Muon NS5; whole step at T = 2 ≤ STEP_RATIO × AdamW.
EIGH_SPEEDUP = 10.0
EIGH_MIN_N = 2048
STEP_RATIO = 1.3
STEP_T = 2
#: Largest relative difference of CuPy vs torch (float32) counted as agreeing.
CUPY_RTOL = 1e-3


# --------------------------------------------------------------------------- config


@dataclass
class Config:
    """One run (defaults: the full GPU run; :data:`TINY` the CPU dry run)."""

    device: str = "cuda"
    tiny: bool = False
    shapes: tuple[tuple[int, int], ...] = (
        (1024, 1024),
        (2048, 2048),
        (4096, 4096),
        (768, 3072),
        (8192, 8192),
    )
    batched: tuple[tuple[int, int, int], ...] = ((12, 768, 768), (12, 768, 3072))
    cupy_shapes: tuple[tuple[int, int], ...] = ((1024, 1024), (768, 3072))
    dtypes: tuple[str, ...] = DTYPES
    #: warm-up calls (fewer when they take over half of ``cap_s``), then timed repeats
    warmup: int = 2
    repeats: int = 10
    #: a measurement whose repeats would take longer than this gets fewer (never < 2)
    cap_s: float = 5.0
    budget_s: float = 270.0
    width: int = 768
    heads: int = 12
    depth: int = 4
    vocab: int = 8192
    seq: int = 1024
    tokens: int = 8192
    step_warmup: int = 12
    steps: int = 20
    intervals: tuple[int, ...] = (1, 2, 10)
    sections: tuple[str, ...] = SECTIONS
    seed: int = 0
    eigh_min_n: int = EIGH_MIN_N


TINY: dict[str, Any] = dict(
    tiny=True,
    shapes=((32, 32), (16, 64)),
    batched=((2, 32, 32), (2, 32, 128)),
    cupy_shapes=((32, 32), (16, 64)),
    warmup=1,
    repeats=2,
    cap_s=1.0,
    width=64,
    heads=4,
    depth=2,
    vocab=64,
    seq=16,
    tokens=64,
    step_warmup=1,
    steps=2,
    eigh_min_n=0,
)


# --------------------------------------------------------------------------- run context


class _Context:
    """Device, timer, budget and progress of one run."""

    def __init__(self, cfg: Config, progress: Callable[[str], None] | None) -> None:
        import torch

        self.cfg = cfg
        self.torch = torch
        self.dev = torch.device(cfg.device)
        self.cuda = self.dev.type == "cuda"
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + cfg.budget_s
        self._progress = progress

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over(self) -> bool:
        return time.perf_counter() > self.deadline

    def say(self, msg: str) -> None:
        if self._progress is not None:
            self._progress(f"[device {self.elapsed():6.1f}s] {msg}")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.dev)

    def cleanup(self) -> None:
        gc.collect()
        if self.cuda:
            with contextlib.suppress(Exception):
                self.torch.cuda.empty_cache()

    def once(self, fn: Callable[[], Any], *, events: bool = True) -> tuple[float, Any]:
        """Seconds of one call (CUDA events, the device synchronised before; else wall)."""
        if self.cuda and events:
            ev = self.torch.cuda.Event
            start, end = ev(enable_timing=True), ev(enable_timing=True)
            self.sync()
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3, out
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t, out

    def measure(
        self, fn: Callable[[], Any], *, events: bool = True
    ) -> tuple[list[float], Any, int]:
        """``(times, last output, warm-up calls)``: warm-up, then the timed repeats."""
        cfg = self.cfg
        warm: list[float] = []
        out = None
        for _ in range(max(cfg.warmup, 1)):
            t, out = self.once(fn, events=events)
            warm.append(t)
            if sum(warm) > cfg.cap_s / 2:
                break
        n = cfg.repeats
        if cfg.cap_s > 0:
            n = max(min(2, cfg.repeats), min(n, int(cfg.cap_s / max(min(warm), 1e-9))))
        times = []
        for _ in range(n):
            t, out = self.once(fn, events=events)
            times.append(t)
        return times, out, len(warm)


def _error(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"error: {type(e).__name__}: {msg[:300]}"


def _timed(
    ctx: _Context, row: dict[str, Any], fn: Callable[[], Any], *, events: bool = True
) -> Any:
    """Time ``fn`` into ``row`` (status, times, median); returns its last output or None."""
    if ctx.over():
        row["status"] = "skipped (budget)"
        return None
    try:
        times, out, warm = ctx.measure(fn, events=events)
    except Exception as e:
        row["status"] = _error(e)
        ctx.cleanup()
        return None
    row.update(
        status="ok",
        times_s=times,
        median_s=statistics.median(times),
        min_s=min(times),
        repeats=len(times),
        warmup_calls=warm,
    )
    return out


def _fmt_ms(s: float | None) -> str:
    return "—" if s is None else f"{1e3 * s:.3g}"


# --------------------------------------------------------------------------- inputs


def make_inputs(
    rows: int,
    cols: int,
    *,
    batch: tuple[int, ...] = (),
    dtype: str = "float32",
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Seeded inputs of one (stacked) layer: ``{"state", "G", "A", "B"}`` in ``dtype`` on
    ``device``.

    ``state`` is a ``kron.KronState`` with orthogonal ``B_C``, ``B_K`` (QR of Gaussians,
    formed in fp32 on ``device``), spread-out ``d`` (``Π d = 1``) and ``α = mean(G²)``;
    ``G`` a Gaussian gradient of RMS ``1/√cols``; ``A (r×c)``, ``B (c×c)`` the operands of
    the matmul baseline. The random numbers are drawn on the CPU (same values everywhere).
    """
    import torch

    from .. import kron

    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    batch = tuple(batch)

    def randn(*shape: int) -> Any:
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dev)

    def orth(n: int) -> Any:
        q, r = torch.linalg.qr(randn(*batch, n, n))
        return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)

    def spectrum(n: int) -> Any:
        logd = 0.5 * randn(*batch, n)
        return torch.exp(logd - logd.mean(-1, keepdim=True))

    g = randn(*batch, rows, cols) / math.sqrt(cols)
    b_c, d_c, b_k, d_k = orth(rows), spectrum(rows), orth(cols), spectrum(cols)
    alpha = (g * g).mean((-2, -1))
    state = kron.KronState(*(x.to(dt) for x in (alpha, b_c, d_c, b_k, d_k)))
    return {
        "state": state,
        "G": g.to(dt),
        "A": randn(*batch, rows, cols).to(dt),
        "B": randn(*batch, cols, cols).to(dt),
    }


def _cast_inputs(x: dict[str, Any], dtype: str) -> dict[str, Any]:
    """:func:`make_inputs`'s output in another dtype (what it returns for that dtype)."""
    import torch

    from .. import kron

    dt = getattr(torch, dtype)
    return {
        "state": kron.KronState(*(None if v is None else v.to(dt) for v in x["state"])),
        **{k: x[k].to(dt) for k in ("G", "A", "B")},
    }


def refresh_step(state: Any, g: Any) -> tuple[Any, Any]:
    """One refresh step as ``SpectralKron`` runs it with its default ``Options``:
    ``optim.refresh_and_direction`` (keep-last-good, then the step; with corrected eigenvalues
    in the basis before the refresh, math §4.10). Returns ``(new state, direction)``."""
    from .. import optim

    o = optim.Options()
    norm_p = 2.0 if o.step_scale == "p2" else None
    new, _, u = optim.refresh_and_direction(state, g, p=o.p, norm_p=norm_p, **o.refresh_kwargs())
    return new, u


def _plain_step(state: Any, g: Any) -> Any:
    from .. import optim

    o = optim.Options()
    return optim.direction(state, g, p=o.p, norm_p=2.0 if o.step_scale == "p2" else None)


def _ns5_copy(g: Any) -> Any:
    """``torch.optim.Muon``'s Newton–Schulz (bf16), for a torch without ``torch.optim._muon``."""
    return newton_schulz5(g.bfloat16())


def _ns5_impl() -> tuple[Callable[[Any], Any], str]:
    try:
        from torch.optim._muon import _zeropower_via_newtonschulz as z
    except ImportError:
        return _ns5_copy, "bench copy of torch.optim.Muon's bf16 Newton–Schulz"

    def ns(g: Any) -> Any:
        return z(g, NS_COEFFS, NS_STEPS, 1e-7)

    return ns, "torch.optim._muon._zeropower_via_newtonschulz (bf16)"


def muon_ns5_bf16(g: Any) -> Any:
    """Muon's 5 quintic Newton–Schulz steps in bf16, as ``torch.optim.Muon`` runs them
    (:func:`.baselines.newton_schulz5` runs the same products in fp32). Pass an fp32 ``g``:
    torch's function works in place on ``g.bfloat16()``, which is ``g`` itself for bf16."""
    return _ns5_impl()[0](g)


def _checksum(u: Any) -> dict[str, Any]:
    """A record of a direction ``u``, to check what was timed: Frobenius norm, sum, first
    entries (in fp32)."""
    import torch

    f = u.detach().float()
    return {
        "fro": float(torch.linalg.vector_norm(f)),
        "sum": float(f.sum()),
        "head": [float(x) for x in f.flatten()[:4]],
        "finite": bool(torch.isfinite(f).all()),
    }


# --------------------------------------------------------------------------- precond


LABELS = {
    "matmul": "matmul (r×c)·(c×c)",
    "spectral_refresh": "spectral refresh + step",
    "spectral_plain": "spectral plain step",
    "eigh_refresh": "eigh refresh (Shampoo/SOAP)",
    "muon_ns5": "Muon NS5",
    "spectral_looped": "spectral refresh + step, one layer at a time",
    "muon_ns5_looped": "Muon NS5, one layer at a time",
}


def _row(section: str, shape: Sequence[int], dtype: str, method: str, **kw: Any) -> dict[str, Any]:
    *batch, r, c = shape
    return {
        "section": section,
        "batch": int(batch[0]) if batch else None,
        "rows": int(r),
        "cols": int(c),
        "dtype": dtype,
        "method": method,
        "label": LABELS[method],
        "status": "not run",
        "median_s": None,
        **kw,
    }


def _ratios(rows: list[dict[str, Any]]) -> None:
    """``matmul_eq``: median ÷ the same-dtype matmul of the same shape."""
    base = {
        (r["batch"], r["rows"], r["cols"], r["dtype"]): r["median_s"]
        for r in rows
        if r["method"] == "matmul" and r["median_s"]
    }
    for r in rows:
        mm = base.get((r["batch"], r["rows"], r["cols"], r["dtype"]))
        r["matmul_eq"] = r["median_s"] / mm if (mm and r["median_s"]) else None


def _precond_shape(
    ctx: _Context, r: int, c: int, seed: int, ns_bf16: Callable[[Any], Any]
) -> list[dict[str, Any]]:
    """Every precond row of one r×c layer."""
    from .. import _array

    cfg = ctx.cfg
    shape = (r, c)
    rows: list[dict[str, Any]] = []
    dtypes = list(cfg.dtypes)
    for dt in dtypes:
        rows += [
            _row("precond", shape, dt, "matmul", seed=seed),
            _row("precond", shape, dt, "spectral_refresh", seed=seed),
            _row("precond", shape, dt, "spectral_plain", seed=seed),
        ]
    rows.append(_row("precond", shape, "float32", "eigh_refresh", seed=seed))
    rows.append(_row("precond", shape, "bfloat16", "muon_ns5", seed=seed, impl="torch.optim.Muon"))
    rows.append(
        _row("precond", shape, "float32", "muon_ns5", seed=seed, impl="baselines.newton_schulz5")
    )
    if ctx.over():
        for row in rows:
            row["status"] = "skipped (budget)"
        return rows
    try:
        f32 = make_inputs(r, c, dtype="float32", device=cfg.device, seed=seed)
        inputs = {dt: _cast_inputs(f32, dt) for dt in dtypes}
        inputs["float32"] = f32
    except Exception as e:
        msg = _error(e)
        for row in rows:
            row["status"] = f"{msg} (building inputs)"
        ctx.cleanup()
        return rows
    st32 = f32["state"]
    left = (st32.B_C * st32.d_C[None, :]) @ st32.B_C.T
    right = (st32.B_K * st32.d_K[None, :]) @ st32.B_K.T
    xp = _array.array_namespace(f32["G"])

    def fn_for(row: dict[str, Any]) -> Callable[[], Any]:
        x = inputs[row["dtype"]]
        st, g = x["state"], x["G"]
        m = row["method"]
        if m == "matmul":
            a, b = x["A"], x["B"]
            return lambda: a @ b
        if m == "spectral_refresh":
            return lambda: refresh_step(st, g)
        if m == "spectral_plain":
            return lambda: _plain_step(st, g)
        if m == "eigh_refresh":
            return lambda: eigh_refresh(xp, left, right, g)
        g32 = f32["G"]
        if row["dtype"] == "bfloat16":  # from the fp32 gradient, as torch.optim.Muon gets it
            return lambda: ns_bf16(g32)
        return lambda: newton_schulz5(g32)

    for row in rows:
        out = _timed(ctx, row, fn_for(row))
        if out is not None and row["method"] == "spectral_refresh":
            row["check"] = _checksum(out[1])
        ctx.say(
            f"precond {r}x{c} {SHORT_DTYPE[row['dtype']]} {row['method']}: "
            + (f"{_fmt_ms(row['median_s'])} ms" if row["status"] == "ok" else row["status"])
        )
    return rows


def _run_precond(ctx: _Context) -> dict[str, Any]:
    ns_bf16, impl = _ns5_impl()
    rows: list[dict[str, Any]] = []
    for i, (r, c) in enumerate(ctx.cfg.shapes):
        rows += _precond_shape(ctx, r, c, ctx.cfg.seed + 101 * i, ns_bf16)
        ctx.cleanup()  # the shape's inputs are gone: give their memory back
    _ratios(rows)
    return {"rows": rows, "muon_bf16_impl": impl}


# --------------------------------------------------------------------------- batched


def _batched_shape(
    ctx: _Context, b: int, r: int, c: int, seed: int, ns_bf16: Callable[[Any], Any]
) -> list[dict[str, Any]]:
    """Every row of ``b`` stacked r×c layers."""
    from .. import kron

    cfg = ctx.cfg
    shape = (b, r, c)
    rows: list[dict[str, Any]] = []
    for dt in cfg.dtypes:
        rows += [
            _row("batched", shape, dt, "matmul", seed=seed),
            _row("batched", shape, dt, "spectral_refresh", seed=seed),
            _row("batched", shape, dt, "spectral_looped", seed=seed),
        ]
    rows.append(_row("batched", shape, "bfloat16", "muon_ns5_looped", seed=seed))
    if ctx.over():
        for row in rows:
            row["status"] = "skipped (budget)"
        return rows
    try:
        f32 = make_inputs(r, c, batch=(b,), dtype="float32", device=cfg.device, seed=seed)
        inputs = {dt: _cast_inputs(f32, dt) for dt in cfg.dtypes}
    except Exception as e:
        for row in rows:
            row["status"] = f"{_error(e)} (building inputs)"
        return rows
    inputs.setdefault("bfloat16", _cast_inputs(f32, "bfloat16"))

    def fn_for(row: dict[str, Any]) -> Callable[[], Any]:
        x = inputs[row["dtype"]]
        st, g = x["state"], x["G"]
        m = row["method"]
        if m == "matmul":
            a, bb = x["A"], x["B"]
            return lambda: a @ bb
        if m == "spectral_refresh":
            return lambda: refresh_step(st, g)
        if m == "spectral_looped":
            layers = [kron.KronState(*(None if v is None else v[k] for v in st)) for k in range(b)]
            return lambda: [refresh_step(s, g[k]) for k, s in enumerate(layers)]
        g32 = f32["G"]  # Muon casts the fp32 gradient to bf16 itself (a copy)
        return lambda: [ns_bf16(g32[k]) for k in range(b)]

    for row in rows:
        out = _timed(ctx, row, fn_for(row))
        if out is not None and row["method"] == "spectral_refresh":
            row["check"] = _checksum(out[1])
        ctx.say(
            f"batched {b}x{r}x{c} {SHORT_DTYPE[row['dtype']]} {row['method']}: "
            + (f"{_fmt_ms(row['median_s'])} ms" if row["status"] == "ok" else row["status"])
        )
    return rows


def _run_batched(ctx: _Context) -> dict[str, Any]:
    cfg = ctx.cfg
    ns_bf16, _ = _ns5_impl()
    rows: list[dict[str, Any]] = []
    for i, (b, r, c) in enumerate(cfg.batched):
        rows += _batched_shape(ctx, b, r, c, cfg.seed + 7 + 101 * i, ns_bf16)
        ctx.cleanup()  # the shape's inputs are gone: give their memory back
    _ratios(rows)
    stacked = {
        (x["batch"], x["rows"], x["cols"], x["dtype"]): x["median_s"]
        for x in rows
        if x["method"] == "spectral_refresh" and x["median_s"]
    }
    for x in rows:
        s = stacked.get((x["batch"], x["rows"], x["cols"], x["dtype"]))
        if x["method"] == "spectral_looped" and s and x["median_s"]:
            x["stacked_speedup"] = x["median_s"] / s
    return {"rows": rows}


# --------------------------------------------------------------------------- whole step


@dataclass
class _Lane:
    key: str
    label: str
    build: Callable[[Any], Any]
    interval: int | None = None
    notes: str = ""
    requires: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _BudgetSpent(Exception):
    """The run's time budget ran out inside a measurement."""


def _is_hidden_matrix(name: str, p: Any) -> bool:
    """The weights Muon takes: 2-D and inside the transformer blocks."""
    return p.ndim == 2 and name.startswith("blocks.")


def _adamw(params: Any) -> Any:
    import torch

    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=1e-3, fused=True)
    except (RuntimeError, ValueError):  # pragma: no cover - a device without fused AdamW
        return torch.optim.AdamW(params, lr=1e-3)


def _lanes(cfg: Config) -> list[_Lane]:
    """AdamW first (the ratios need it), SpectralKron at T = 2 second (the target)."""
    import torch

    from ..torch import SpectralKron
    from .reference import Chain

    def spectral(T: int, **kw: Any) -> Callable[[Any], Any]:
        return lambda model: SpectralKron(model.parameters(), lr=1e-3, update_interval=T, **kw)

    def muon(model: Any) -> Any:
        named = list(model.named_parameters())
        hidden = [p for n, p in named if _is_hidden_matrix(n, p)]
        rest = [p for n, p in named if not _is_hidden_matrix(n, p)]
        return Chain(torch.optim.Muon(hidden, lr=0.02), _adamw(rest))

    def soap(model: Any) -> Any:
        import heavyball
        import heavyball.utils

        heavyball.utils.compile_mode = None  # no torch.compile (minutes of compilation)
        heavyball.utils.compile_mode_recommended_to_none = None
        return heavyball.SOAP(model.parameters(), lr=1e-3)

    order = [STEP_T, *(t for t in cfg.intervals if t != STEP_T)]
    lanes = [_Lane("adamw", "AdamW (fused)", lambda m: _adamw(m.parameters()))]
    for T in order:
        lanes.append(_Lane(f"spectral_T{T}", f"SpectralKron T={T}", spectral(T), T, "fp32 factors"))
    lanes.append(
        _Lane(
            f"spectral_T{STEP_T}_bf16",
            f"SpectralKron T={STEP_T}, bf16 factors",
            spectral(STEP_T, precond_dtype=torch.bfloat16),
            STEP_T,
            "precond_dtype=torch.bfloat16",
        )
    )
    if hasattr(torch.optim, "Muon"):
        lanes.append(
            _Lane(
                "muon",
                "Muon (torch.optim.Muon) + AdamW",
                muon,
                notes="bf16 Newton–Schulz on the blocks' 2-D weights, fused AdamW on the rest",
            )
        )
    lanes.append(
        _Lane("soap", "SOAP (heavyball)", soap, 10, "torch.compile off", requires="heavyball")
    )
    return lanes


def _model_config(cfg: Config) -> Any:
    from .step import Config as StepConfig

    shared = ("width", "depth", "heads", "vocab", "seq", "tokens", "seed")
    return StepConfig(**{k: getattr(cfg, k) for k in shared}, device="cpu", dtype="float32")


def _run_lane(
    ctx: _Context, lane: _Lane, base: Any, batches: list[Any], mask: Any
) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from .step import forward

    cfg = ctx.cfg
    row: dict[str, Any] = {
        "key": lane.key,
        "label": lane.label,
        "interval": lane.interval,
        "notes": lane.notes,
        "status": "not run",
        "mean_s": None,
        "median_s": None,
        "opt_mean_s": None,
        "peak_memory_bytes": None,
    }
    if lane.requires is not None:
        try:
            __import__(lane.requires)
        except Exception as e:
            row["status"] = f"skipped ({lane.requires} does not import: {type(e).__name__})"
            return row
    if ctx.over():
        row["status"] = "skipped (budget)"
        return row
    precision = torch.get_float32_matmul_precision()
    model: Any = None
    opt: Any = None
    try:
        ctx.cleanup()
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(ctx.dev)
        model = copy.deepcopy(base).to(ctx.dev)
        opt = lane.build(model)
        dev_type = ctx.dev.type
        last: list[Any] = [None]

        def fwd_bwd(i: int) -> None:
            x, y = batches[i % len(batches)]
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev_type, dtype=torch.bfloat16):
                logits = forward(model, x, mask)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            loss.backward()
            last[0] = loss.detach()

        for i in range(cfg.step_warmup):
            if ctx.over():
                raise _BudgetSpent(f"after {i} untimed steps")
            fwd_bwd(i)
            opt.step()
        whole: list[float] = []
        opt_t: list[float] = []
        for i in range(cfg.step_warmup, cfg.step_warmup + cfg.steps):
            if ctx.over():
                raise _BudgetSpent(f"after {i} steps")
            if ctx.cuda:
                ev = torch.cuda.Event
                e0, e1, e2 = (ev(enable_timing=True) for _ in range(3))
                ctx.sync()
                e0.record()
                fwd_bwd(i)
                e1.record()
                opt.step()
                e2.record()
                e2.synchronize()
                whole.append(e0.elapsed_time(e2) / 1e3)
                opt_t.append(e1.elapsed_time(e2) / 1e3)
            else:
                t0 = time.perf_counter()
                fwd_bwd(i)
                t1 = time.perf_counter()
                opt.step()
                t2 = time.perf_counter()
                whole.append(t2 - t0)
                opt_t.append(t2 - t1)
        row.update(
            status="ok",
            times_s=whole,
            opt_times_s=opt_t,
            mean_s=statistics.fmean(whole),
            median_s=statistics.median(whole),
            opt_mean_s=statistics.fmean(opt_t),
            final_loss=float(last[0]) if last[0] is not None else None,
            peak_memory_bytes=int(torch.cuda.max_memory_allocated(ctx.dev)) if ctx.cuda else None,
        )
        if lane.key.startswith("spectral"):
            with contextlib.suppress(Exception):
                row["refreshes"] = max(
                    int(s["refreshes"])
                    for s in opt.state.values()
                    if isinstance(s, dict) and "refreshes" in s
                )
    except _BudgetSpent as e:
        row["status"] = f"skipped (budget) {e}"
    except Exception as e:
        row["status"] = _error(e)
    finally:
        model = opt = None  # free this lane's model and state before the next one
        torch.set_float32_matmul_precision(precision)  # heavyball may change it
        ctx.cleanup()
    ctx.say(
        f"step {lane.key}: "
        + (
            f"mean {_fmt_ms(row['mean_s'])} ms (opt {_fmt_ms(row['opt_mean_s'])} ms)"
            if row["status"] == "ok"
            else row["status"]
        )
    )
    return row


def _run_step(ctx: _Context) -> dict[str, Any]:
    import torch

    from .step import build_model

    cfg = ctx.cfg
    mcfg = _model_config(cfg)
    info = {
        "width": cfg.width,
        "heads": cfg.heads,
        "depth": cfg.depth,
        "vocab": cfg.vocab,
        "seq": cfg.seq,
        "batch": mcfg.batch,
        "tokens": mcfg.batch * cfg.seq,
        "autocast": "bfloat16",
        "weights": "float32",
        "warmup_steps": cfg.step_warmup,
        "timed_steps": cfg.steps,
    }
    if ctx.over():
        return {"config": info, "rows": [], "status": "skipped (budget)"}
    try:
        base = build_model(mcfg)
        info["params"] = sum(p.numel() for p in base.parameters())
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        batches = []
        for _ in range(4):
            ids = torch.randint(0, cfg.vocab, (mcfg.batch, cfg.seq + 1), generator=gen)
            ids = ids.to(ctx.dev)
            batches.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
        mask = torch.nn.Transformer.generate_square_subsequent_mask(
            cfg.seq, device=ctx.dev, dtype=torch.float32
        )
        lanes = _lanes(cfg)
    except Exception as e:
        return {"config": info, "rows": [], "status": _error(e)}
    rows = [_run_lane(ctx, lane, base, batches, mask) for lane in lanes]
    adamw = next((r["mean_s"] for r in rows if r["key"] == "adamw" and r["mean_s"]), None)
    for r in rows:
        r["vs_adamw"] = r["mean_s"] / adamw if (adamw and r["mean_s"]) else None
    return {"config": info, "rows": rows, "status": "ok"}


# --------------------------------------------------------------------------- cupy


def _max_rel(a: Any, b: Any) -> float:
    """``max|a − b| / max|b|`` of two numpy arrays."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b))), 1e-30)
    return float(np.max(np.abs(a - b))) / scale


def _core_call(state: Any, g: Any) -> tuple[Any, Any]:
    """``kron.update_gop`` + ``kron.precondition`` with the optimizer's default options."""
    from .. import kron, optim

    o = optim.Options()
    kw = o.refresh_kwargs()
    kw["beta2"] = kw.pop("precond_lr")
    new = kron.update_gop(state, g, check=False, **kw)
    return new, kron.precondition(new, g, p=o.p, check=False)


def _run_cupy(ctx: _Context) -> dict[str, Any]:
    import numpy as np

    from .. import kron

    cfg = ctx.cfg
    xmod: Any = None
    backend = "cupy"
    reason = None
    try:
        import cupy

        xmod = cupy
        if not ctx.cuda:
            reason = "no GPU (--device cpu)"
    except Exception as e:
        reason = f"cupy does not import ({type(e).__name__})"
    if reason is not None:
        if not cfg.tiny:
            return {"status": f"skipped ({reason})", "rows": [], "tol": CUPY_RTOL}
        xmod, backend = None, "numpy (dry-run stand-in for cupy)"
    to_host: Callable[[Any], Any] = np.asarray if xmod is None else xmod.asnumpy
    to_x: Callable[[Any], Any] = np.asarray if xmod is None else xmod.asarray
    rows: list[dict[str, Any]] = []
    for i, (r, c) in enumerate(cfg.cupy_shapes):
        seed = cfg.seed + 13 + 101 * i
        trow: dict[str, Any] = {"backend": "torch", "rows": r, "cols": c, "status": "not run"}
        xrow: dict[str, Any] = {"backend": backend, "rows": r, "cols": c, "status": "not run"}
        rows += [trow, xrow]
        if ctx.over():
            trow["status"] = xrow["status"] = "skipped (budget)"
            continue
        try:
            host = make_inputs(r, c, dtype="float32", device="cpu", seed=seed)
            st_host = kron.KronState(*(None if v is None else v.numpy() for v in host["state"]))
            g_host = host["G"].numpy()
            st_t = kron.KronState(*(None if v is None else v.to(ctx.dev) for v in host["state"]))
            g_t = host["G"].to(ctx.dev)
            st_x = kron.KronState(*(None if v is None else to_x(v) for v in st_host))
            g_x = to_x(g_host)
        except Exception as e:
            trow["status"] = xrow["status"] = f"{_error(e)} (building inputs)"
            continue
        out_t = _timed(ctx, trow, functools.partial(_core_call, st_t, g_t), events=False)
        out_x = _timed(ctx, xrow, functools.partial(_core_call, st_x, g_x), events=False)
        if out_t is not None and out_x is not None:
            try:
                (nt, ut), (nx, ux) = out_t, out_x
                diffs = {
                    name: _max_rel(to_host(vx), vt.detach().cpu().numpy())
                    for name, vt, vx in zip((*kron.KronState._fields, "U"), (*nt, ut), (*nx, ux))
                    if vt is not None
                }
                xrow["max_rel_diff"] = diffs
                xrow["max_rel_diff_all"] = max(diffs.values())
                xrow["agrees"] = xrow["max_rel_diff_all"] <= CUPY_RTOL
                if trow["median_s"]:
                    xrow["vs_torch"] = xrow["median_s"] / trow["median_s"]
            except Exception as e:
                xrow["status"] = _error(e) + " (comparing)"
        for row in (trow, xrow):
            ctx.say(
                f"cupy-vs-torch {r}x{c} {row['backend']}: "
                + (f"{_fmt_ms(row.get('median_s'))} ms" if row["status"] == "ok" else row["status"])
                + (f", max rel diff {row['max_rel_diff_all']:.2e}" if "agrees" in row else "")
            )
    status = "ok" if xmod is not None else f"dry run ({reason}): numpy in cupy's place"
    return {"status": status, "backend": backend, "rows": rows, "tol": CUPY_RTOL}


# --------------------------------------------------------------------------- targets


def _find(table: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    return next((r for r in table if all(r.get(k) == v for k, v in kw.items())), None)


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The three PASS/FAIL targets from the measured rows (``n/a`` where nothing to judge)."""
    cfg = data["config"]
    pre = data["sections"].get("precond", {}).get("rows", [])
    min_n = cfg["eigh_min_n"]
    out = []

    def verdict(checks: list[dict[str, Any]]) -> str:
        if not checks:
            return "n/a"
        return "PASS" if all(c["pass"] for c in checks) else "FAIL"

    checks = []
    for r, c in cfg["shapes"]:
        if min(r, c) < min_n:
            continue
        eigh = _find(pre, rows=r, cols=c, method="eigh_refresh", status="ok")
        for dt in cfg["dtypes"]:
            spec = _find(pre, rows=r, cols=c, method="spectral_refresh", dtype=dt, status="ok")
            if eigh and spec:
                speed = eigh["median_s"] / spec["median_s"]
                checks.append(
                    {
                        "layer": f"{r}×{c}",
                        "dtype": dt,
                        "value": speed,
                        "text": f"eigh ÷ refresh = {speed:.1f}×",
                        "pass": speed >= EIGH_SPEEDUP,
                    }
                )
    out.append(
        {
            "key": "refresh_vs_eigh",
            "target": f"refresh ≥ {EIGH_SPEEDUP:g}× faster than the fp32 eigh refresh"
            + (f" at n ≥ {min_n}" if min_n else ""),
            "checks": checks,
            "verdict": verdict(checks),
        }
    )
    checks = []
    for r, c in cfg["shapes"]:
        for dt in cfg["dtypes"]:
            spec = _find(pre, rows=r, cols=c, method="spectral_refresh", dtype=dt, status="ok")
            ns = _find(pre, rows=r, cols=c, method="muon_ns5", dtype=dt, status="ok")
            if spec and ns:
                ratio = spec["median_s"] / ns["median_s"]
                checks.append(
                    {
                        "layer": f"{r}×{c}",
                        "dtype": dt,
                        "value": ratio,
                        "text": f"refresh ÷ NS5 = {ratio:.2f}",
                        "pass": ratio <= 1.0,
                    }
                )
    out.append(
        {
            "key": "refresh_vs_muon",
            "target": "refresh ≤ Muon NS5's time (same size, same dtype)",
            "checks": checks,
            "verdict": verdict(checks),
        }
    )
    steps = data["sections"].get("step", {}).get("rows", [])
    spec = _find(steps, key=f"spectral_T{STEP_T}", status="ok")
    checks = []
    if spec and spec.get("vs_adamw"):
        checks.append(
            {
                "layer": "whole step",
                "dtype": "fp32 factors",
                "value": spec["vs_adamw"],
                "text": f"SpectralKron T={STEP_T} ÷ AdamW = {spec['vs_adamw']:.2f}",
                "pass": spec["vs_adamw"] <= STEP_RATIO,
            }
        )
    out.append(
        {
            "key": "step_vs_adamw",
            "target": f"whole step at T = {STEP_T} ≤ {STEP_RATIO:g}× AdamW",
            "checks": checks,
            "verdict": verdict(checks),
        }
    )
    return out


# --------------------------------------------------------------------------- run


def run(cfg: Config, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every section of ``cfg.sections``; returns ``{"machine", "config", "sections",
    "targets"}`` (JSON-able)."""
    import torch

    from .. import optim

    ctx = _Context(cfg, progress)
    load0 = report.loadavg()
    sections: dict[str, Any] = {}
    runners = {
        "precond": _run_precond,
        "step": _run_step,
        "batched": _run_batched,
        "cupy": _run_cupy,
    }
    for name in ("precond", "step", "batched", "cupy"):  # the targets' sections first
        if name not in cfg.sections:
            sections[name] = {"status": "skipped (not asked for)", "rows": []}
            continue
        if ctx.over():
            sections[name] = {"status": "skipped (budget)", "rows": []}
            ctx.say(f"{name}: skipped (budget)")
            continue
        ctx.say(f"{name} …")
        try:
            sections[name] = runners[name](ctx)
        except Exception as e:  # a bug of a section must not lose the others
            sections[name] = {"status": _error(e), "rows": []}
        ctx.cleanup()
    try:
        info = report.machine_info(cfg.device, numpy=True)
    except Exception as e:
        info = {"device": cfg.device, "machine_info": _error(e)}
    info["loadavg_start"] = load0
    info["loadavg_end"] = report.loadavg()
    info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    versions: dict[str, str | None] = {}
    for mod in ("cupy", "heavyball"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception:
            versions[mod] = None
    info["versions"] = versions
    config = asdict(cfg)
    config.update(
        wall_s=ctx.elapsed(),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        options=optim.Options().as_dict(),
        route="optim.refresh_and_direction (SpectralKron's refresh step)",
        timer="CUDA events" if ctx.cuda else "time.perf_counter",
    )
    data: dict[str, Any] = {"machine": info, "config": config, "sections": sections}
    data["targets"] = targets(data)
    return data


# --------------------------------------------------------------------------- report


def _status_cell(row: dict[str, Any]) -> str:
    return "" if row.get("status") == "ok" else str(row.get("status"))


def _ratio(v: float | None, fmt: str = ".1f") -> str:
    return "—" if v is None else format(v, fmt)


def _layer(row: dict[str, Any]) -> str:
    b = f"{row['batch']} × " if row.get("batch") else ""
    return f"{b}{row['rows']}×{row['cols']}"


def markdown(data: dict[str, Any]) -> str:
    """The report (every section, the targets), between the ``gpu`` markers."""
    cfg, info, sec = data["config"], data["machine"], data["sections"]
    where = info.get("gpu") or info.get("cpu", "?")
    lines = [
        BEGIN,
        "",
        f"Device: {info.get('device')} ({where}); torch {info.get('torch', '?')}"
        + (f", CUDA {info['cuda']}" if info.get("cuda") else "")
        + f"; fp32 matmul precision {info.get('float32_matmul_precision')!r}; "
        f"timer: {cfg['timer']}; {cfg['date']}; {cfg['wall_s']:.0f} s in all (budget "
        f"{cfg['budget_s']:g} s)."
        + (" **Dry run at tiny sizes: no number here measures a GPU.**" if cfg["tiny"] else ""),
        "",
        "## Targets",
        "",
    ]
    cells = [["target", "verdict", "measured"]]
    for t in data["targets"]:
        measured = "; ".join(
            f"{c['layer']} {SHORT_DTYPE.get(c['dtype'], c['dtype'])}: {c['text']}"
            f"{'' if c['pass'] else ' ✗'}"
            for c in t["checks"]
        )
        verdict = f"**{t['verdict']}**" + (" (dry run)" if cfg["tiny"] else "")
        cells.append([t["target"], verdict, measured or "no measurement"])
    lines += report.md_table(cells, "lll")
    lines += [
        "",
        "## Preconditioner refresh + step, per layer",
        "",
        "Median of repeats after a warm-up; `× matmul`: ÷ one (r×c)·(c×c) product in the "
        "same dtype (n×n×n for a square layer), measured in the same run. Refresh + step: "
        "`optim.refresh_and_direction`, SpectralKron's default options; plain step: "
        "`optim.direction` alone; eigh: both factors accumulated, `torch.linalg.eigh`ed and "
        "applied, fp32; Muon NS5: bf16 as `torch.optim.Muon` runs it (from the fp32 "
        "gradient), fp32 as `baselines.newton_schulz5`.",
        "",
    ]
    lines += _rows_table(sec.get("precond", {}))
    lines += [
        "",
        "## Stacked same-shape layers (one batched call)",
        "",
        "`× matmul`: ÷ the same products as one batched matmul; `stacked speed-up`: the "
        "one-layer-at-a-time time ÷ the stacked one.",
        "",
    ]
    lines += _rows_table(sec.get("batched", {}), looped=True)
    st = sec.get("step", {})
    mc = st.get("config", {})
    lines += [
        "",
        "## Whole training step",
        "",
        f"GPT-2-small-like stack: width {mc.get('width')}, {mc.get('heads')} heads, "
        f"{mc.get('depth')} blocks, vocabulary {mc.get('vocab')}, "
        f"{mc.get('batch')} × {mc.get('seq')} = {mc.get('tokens')} tokens a step, bf16 "
        f"autocast, fp32 weights; {mc.get('warmup_steps')} untimed steps, then the mean of "
        f"{mc.get('timed_steps')} (zero_grad + forward + backward + step). `opt`: the "
        "`step()` call alone. Peak memory: `torch.cuda.max_memory_allocated` of that "
        "optimizer's run.",
        "",
    ]
    if st.get("status") not in (None, "ok"):
        lines.append(f"Not run: {st['status']}.")
    else:
        cells = [["optimizer", "mean ms", "median ms", "opt ms", "× AdamW", "peak MiB", "note"]]
        for r in st.get("rows", []):
            mem = r.get("peak_memory_bytes")
            cells.append(
                [
                    r["label"],
                    _fmt_ms(r.get("mean_s")),
                    _fmt_ms(r.get("median_s")),
                    _fmt_ms(r.get("opt_mean_s")),
                    _ratio(r.get("vs_adamw"), ".2f"),
                    "—" if mem is None else f"{mem / 2**20:.0f}",
                    _status_cell(r) or r.get("notes", ""),
                ]
            )
        lines += report.md_table(cells, "lrrrrrl")
    cu = sec.get("cupy", {})
    lines += [
        "",
        "## CuPy backend vs torch",
        "",
        "`kron.update_gop` + `kron.precondition` (float32, default options) on identical "
        "inputs; `max rel diff`: the largest `max|x − x_torch| / max|x_torch|` over the "
        f"new factors and the step (agrees: ≤ {cu.get('tol', CUPY_RTOL):g}).",
        "",
    ]
    if not cu.get("rows"):
        lines.append(f"Not run: {cu.get('status')}.")
    else:
        if cu.get("status") != "ok":
            lines += [f"{cu['status']}.", ""]
        cells = [["backend", "layer", "ms", "× torch", "max rel diff", "agrees", "note"]]
        for r in cu["rows"]:
            d = r.get("max_rel_diff_all")
            cells.append(
                [
                    r["backend"],
                    f"{r['rows']}×{r['cols']}",
                    _fmt_ms(r.get("median_s")),
                    _ratio(r.get("vs_torch"), ".2f"),
                    "—" if d is None else f"{d:.1e}",
                    "—" if "agrees" not in r else ("yes" if r["agrees"] else "no"),
                    _status_cell(r),
                ]
            )
        lines += report.md_table(cells, "llrrrll")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def _rows_table(sec: dict[str, Any], *, looped: bool = False) -> list[str]:
    rows = sec.get("rows", [])
    if not rows:
        return [f"Not run: {sec.get('status')}."]
    head = ["layer", "dtype", "method", "ms", "× matmul"]
    if looped:
        head.append("stacked speed-up")
    cells = [[*head, "note"]]
    for r in rows:
        cell = [
            _layer(r),
            SHORT_DTYPE.get(r["dtype"], r["dtype"]),
            r["label"],
            _fmt_ms(r.get("median_s")),
            _ratio(r.get("matmul_eq")),
        ]
        if looped:
            cell.append(_ratio(r.get("stacked_speedup"), ".2f"))
        cells.append([*cell, _status_cell(r)])
    return report.md_table(cells, "lll" + "r" * (len(head) - 3) + "l")


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``bench device``."""
    p.add_argument(
        "--device",
        default=None,
        help="torch device (default: cuda when available, else an error: use --device cpu "
        "--tiny for a dry run)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="dry run of every code path at tiny sizes (n = 32, 2 blocks of width 64, "
        "2 repeats): < 30 s on a CPU",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=270.0,
        metavar="SECONDS",
        help="after this many seconds the remaining measurements are skipped and marked "
        "'skipped (budget)' (default 270)",
    )
    report.add_choices_argument(
        p, "--sections", SECTIONS, help=f"sections to run (default all: {' '.join(SECTIONS)})"
    )
    report.add_sizes_argument(
        p,
        "square layer sizes of the precond section, replacing the default shapes "
        "(1024 2048 4096 8192 and 768x3072)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 10)")
    p.add_argument("--depth", type=int, default=None, help="transformer blocks (default 4)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 20)")
    report.add_seed_argument(p)
    report.add_threads_argument(p)
    report.add_output_arguments(p, docs="docs/benchmarks_gpu.md and docs/benchmarks_gpu.json")
    report.add_quiet_argument(p)


def config_from_args(args: argparse.Namespace, device: str) -> Config:
    cfg = Config(device=device, budget_s=args.budget_s, seed=args.seed)
    if args.tiny:
        cfg = replace(cfg, **TINY)
    if args.sizes:
        cfg = replace(cfg, shapes=tuple((n, n) for n in args.sizes))
    if args.repeats is not None:
        cfg = replace(cfg, repeats=args.repeats)
    if args.depth is not None:
        cfg = replace(cfg, depth=args.depth)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.sections:
        cfg = replace(cfg, sections=tuple(args.sections))
    return cfg


def _pick_device(asked: str | None) -> str | None:
    import torch

    if asked is None:
        return "cuda" if torch.cuda.is_available() else None
    if asked.startswith("cuda") and not torch.cuda.is_available():
        return None
    return asked


def main(args: argparse.Namespace) -> int:
    """Entry point of ``bench device`` (parsed ``args``)."""
    device = _pick_device(args.device)
    if device is None:
        print(
            "error: bench device needs a CUDA GPU and torch sees none (a CPU-only torch "
            "build, or no device). For a dry run of the same code at tiny sizes: "
            "python -m spectral_curv.bench device --device cpu --tiny",
            file=sys.stderr,
        )
        return 2
    if args.write_docs and (args.tiny or not device.startswith("cuda")):
        raise SystemExit("error: --write-docs publishes full GPU runs only (not --tiny or cpu)")
    out = report.outputs(args)
    threads = report.set_threads(args.threads)
    cfg = config_from_args(args, device)
    print(
        f"bench device{' (tiny dry run)' if cfg.tiny else ''} on {device}: sections "
        f"{' '.join(cfg.sections)}, budget {cfg.budget_s:g} s; {report.threads_line(threads)}",
        flush=True,
    )
    out.announce()
    progress = report.progress_printer(args.quiet)

    data = run(cfg, progress)
    data["config"]["threads"] = threads
    text = markdown(data)
    print(text, flush=True)
    md = out.file("benchmarks_gpu.md", "gpu.md")
    js = out.file("benchmarks_gpu.json", "gpu.json")
    if md is None or js is None:
        return 0
    command = "python -m spectral_curv.bench device" + (
        f" --device {device} --tiny" if cfg.tiny else ""
    )
    title = "# GPU benchmark" + (" (tiny dry run)" if cfg.tiny else "") + "\n\n"
    report.write_markdown(
        md,
        text,
        header=title + f"Command: `{command}`; the numbers: [{js.name}]({js.name}).\n\n",
    )
    report.write_json(js, None, data)
    for path in (md, js):
        print(f"wrote {path}", file=sys.stderr)
    return 0
