"""Preconditioner cost (``bench precond``): one refresh step in matmul-equivalents, fp32 CPU.

For a square n×n layer, each method's time is divided by the time of one n×n×n matmul
``A @ B`` measured in the same run, on the same backend, interleaved with the method's own
repeats (so a burst of load from elsewhere hits both). Methods:

``spectral_quadratic`` (the optimizers' default route, and the target)
    What ``SpectralKron`` runs on a refresh step, called as the optimizers call it:
    ``optim.refresh_and_direction(state, G, p, cayley="quadratic", exp="first_order", ...)``
    (the GOP update with keep-last-good, then the step in the basis before it, sharing ``R``:
    math §4.10's lagged order). Products: R = B_CᵀGB_K (2), W_C, W_K (2), per factor X², B·Q
    (2×2), the step B_C[…]B_Kᵀ (2): 10.
``spectral_kron_eigs``
    ``spectral_quadratic`` with ``eigenvalues="kron"`` (the paper's step eigenvalues, the
    default before the corrected ones of math §4.10): the step with the new factors forms
    ``R`` again, 12 products, and has no per-entry moment ``V`` (elementwise).
``spectral_quartic``
    The same with ``cayley="quartic"`` (orthogonal to ``O(X⁸)``): per factor X², B·F₁, ·F₂: 12.
``spectral_neumann``
    The same with ``cayley="neumann", cayley_terms=K``: per factor X², P·X², B·P at K = 1: 12.
``spectral_generic`` (torch only)
    ``spectral_quadratic`` with the torch fast paths switched off (``backends.generic_only``).
``spectral_exact``
    ``cayley="exact"``: 8 products and one LU solve per factor.
``eigh_refresh``
    Shampoo/SOAP (:func:`.baselines.eigh_refresh`): accumulate both factors (2 products),
    ``eigh`` of both, the preconditioned step (4 products).
``muon_ns5``
    Muon's 5 quintic Newton–Schulz steps (:func:`.baselines.newton_schulz5`), fp32: 15.

A plain step (no refresh: ``optim.direction`` only) costs 4 products; the periodic
re-orthonormalisation (one refresh in ``reorth_interval``) is not timed. "flop-eq" counts
the flops in matmul units on that backend: numpy runs ``A @ A.T`` as a BLAS ``syrk`` at half
the flops, torch (the spectral rows' ``_array.gram`` fast path) as a blocked product at 9/16
of them (three block levels, n = 1024; 0.53 at 2048), an LU solve ``(I−X)⁻¹(I+X)`` is 4/3;
``eigh`` gets none (it is dominated by a memory-bound tridiagonal reduction).
Reports: :mod:`.precond_report`.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import functools
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import optim
from ..baselines import NS_STEPS, eigh_refresh, newton_schulz5
from . import report

__all__ = [
    "BACKENDS",
    "DEFAULT_SIZES",
    "METHODS",
    "QUICK_SIZES",
    "ROUTE",
    "TARGET",
    "TARGET_METHOD",
    "Result",
    "add_arguments",
    "analytic",
    "main",
    "run",
]

DEFAULT_SIZES = (256, 512, 1024, 2048)
QUICK_SIZES = (128, 256)
BACKENDS = ("numpy", "torch")
#: Acceptance target for the spectral refresh step (``TARGET_METHOD``) at n >= 1024.
TARGET = 12.0
TARGET_METHOD = "spectral_quadratic"
TARGET_MIN_N = 1024

METHODS = (
    "spectral_quadratic",
    "spectral_kron_eigs",
    "spectral_quartic",
    "spectral_neumann",
    "spectral_generic",
    "spectral_exact",
    "eigh_refresh",
    "muon_ns5",
)
LABELS = {
    "spectral_quadratic": "spectral, quadratic Cayley",
    "spectral_kron_eigs": "spectral, quadratic, Kronecker eigenvalues",
    "spectral_quartic": "spectral, quartic Cayley",
    "spectral_neumann": "spectral, Neumann Cayley K={K}",
    "spectral_generic": "spectral, quadratic, generic route",
    "spectral_exact": "spectral, exact Cayley",
    "eigh_refresh": "eigh refresh (Shampoo/SOAP)",
    "muon_ns5": "Muon NS5",
}
SHORT = {
    "spectral_quadratic": "spec-quadratic",
    "spectral_kron_eigs": "spec-kron-eigs",
    "spectral_quartic": "spec-quartic",
    "spectral_neumann": "spec-Neumann",
    "spectral_generic": "spec-generic",
    "spectral_exact": "spec-exact",
    "eigh_refresh": "eigh",
    "muon_ns5": "Muon-NS5",
}

# Hyperparameters of the timed spectral calls; the others are SpectralKron's defaults. The
# root and the step's size are the defaults' (a root p ≠ 2 at the p = 2 step's norm adds the
# rescale's elementwise passes to the step; eigh's root only changes an exponent).
P_ROOT = optim.Options().p
NORM_P = optim.step_norm_p(optim.Options().step_scale)
BETA2 = 0.1
DAMPING = 1e-8
EIGH_BETA = 0.95
#: ``optim.direction``: R = B_CᵀGB_K (2) + the step B_C[…]B_Kᵀ (2).
DIRECTION_PRODUCTS = 4
#: The lagged step after a refresh (corrected eigenvalues): the step only, R is shared.
LAGGED_DIRECTION_PRODUCTS = 2
#: What the spectral rows time (stored in the JSON's config).
ROUTE = "optim.refresh_and_direction"


# --------------------------------------------------------------------------- counts


def _neumann_products(terms: int) -> tuple[int, int]:
    """(products, syrk-able) of ``B · Cayley_K(X)``: X², K× P·Y, K−1 squarings, B·P."""
    squarings = max(terms - 1, 0)
    return 1 + terms + squarings + 1, 1 + squarings


def analytic(method: str, terms: int = 1) -> dict[str, Any]:
    """Analytical cost of one call for a square layer, n-independent in matmul units.

    ``products``: n×n×n matrix products; ``syrk``: how many of them are ``A·Aᵀ`` (numpy
    runs those at half the flops); ``other``: non-product kernels; ``other_flop_eq``: their
    flops in matmul units (None where a flop count is not meaningful).
    """
    d = DIRECTION_PRODUCTS if method == "spectral_kron_eigs" else LAGGED_DIRECTION_PRODUCTS
    step = "direction: R 2 + step 2" if d == DIRECTION_PRODUCTS else "step 2 (R shared)"
    if method in ("spectral_quadratic", "spectral_generic", "spectral_kron_eigs"):
        return {
            "products": 8 + d,
            "syrk": 4,
            "other": "",
            "other_flop_eq": 0.0,
            "breakdown": f"refresh: R 2 + W_C,W_K 2 + 2×(X², B·Q); {step}",
        }
    if method == "spectral_quartic":
        return {
            "products": 10 + d,
            "syrk": 4,
            "other": "",
            "other_flop_eq": 0.0,
            "breakdown": f"refresh: R 2 + W_C,W_K 2 + 2×(X², B·F₁, ·F₂); {step}",
        }
    if method == "spectral_neumann":
        prod, syrk = _neumann_products(terms)
        return {
            "products": 4 + 2 * prod + d,
            "syrk": 2 + 2 * syrk,
            "other": "",
            "other_flop_eq": 0.0,
            "breakdown": f"refresh: R 2 + W_C,W_K 2 + 2×{prod} Cayley (K={terms}); {step}",
        }
    if method == "spectral_exact":
        return {
            "products": 6 + d,
            "syrk": 2,
            "other": "2 solve",
            "other_flop_eq": 2 * 4.0 / 3.0,
            "breakdown": f"refresh: R 2 + W_C,W_K 2 + 2×(LU solve + B·C); {step}",
        }
    if method == "eigh_refresh":
        return {
            "products": 6,
            "syrk": 2,
            "other": "2 eigh",
            "other_flop_eq": None,
            "breakdown": "GGᵀ, GᵀG 2 + step 4 + 2 eigh",
        }
    if method == "muon_ns5":
        return {
            "products": 3 * NS_STEPS,
            "syrk": NS_STEPS,
            "other": "",
            "other_flop_eq": 0.0,
            "breakdown": f"{NS_STEPS}×(XXᵀ, A·A, B·X)",
        }
    raise ValueError(f"unknown method {method!r}")


#: Flops of torch's blocked ``x xᵀ`` (``backends.torch.gram``) in matmul units at n = 1024:
#: three levels of halving, ``1/2 + 1/2⁴``.
TORCH_GRAM_FLOPS = 9 / 16


def flop_eq(method: str, backend: str, terms: int = 1) -> float | None:
    """Flops in matmul units on ``backend`` (numpy: syrk = ½ a matmul; torch: the spectral
    routes' blocked gram, :data:`TORCH_GRAM_FLOPS`; the generic route and the references
    form ``A @ A.T`` in full there)."""
    a = analytic(method, terms)
    if a["other_flop_eq"] is None:
        return None
    if backend == "numpy":
        saved = 0.5 * a["syrk"]
    elif method.startswith("spectral") and method != "spectral_generic":
        saved = (1.0 - TORCH_GRAM_FLOPS) * a["syrk"]
    else:
        saved = 0.0
    return a["products"] - saved + a["other_flop_eq"]


def analytic_label(method: str, backend: str, terms: int = 1) -> str:
    """``"12"``, ``"10+2 solve"``, ``"6+2 eigh"`` … (products, plus other kernels)."""
    a = analytic(method, terms)
    return f"{a['products']}" + (f"+{a['other']}" if a["other"] else "")


# --------------------------------------------------------------------------- methods


@functools.lru_cache(maxsize=2)
def _inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded float32 inputs: a gradient, orthogonal factors, spread-out ``d`` (det = 1)."""
    rng = np.random.default_rng(seed)

    def orth() -> np.ndarray:
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        return (q * np.sign(np.diag(r))[None, :]).astype(np.float32)

    def spectrum() -> np.ndarray:
        logd = 0.5 * rng.standard_normal(n)
        return np.exp(logd - logd.mean()).astype(np.float32)

    b_c, b_k, d_c, d_k = orth(), orth(), spectrum(), spectrum()
    return {
        "G": (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32),
        "A": rng.standard_normal((n, n)).astype(np.float32),
        "B": rng.standard_normal((n, n)).astype(np.float32),
        "B_C": b_c,
        "B_K": b_k,
        "d_C": d_c,
        "d_K": d_k,
        "L": ((b_c * d_c[None, :]) @ b_c.T).astype(np.float32),
        "R": ((b_k * d_k[None, :]) @ b_k.T).astype(np.float32),
    }


def _callables(
    backend: str, n: int, terms: int, seed: int, methods: Sequence[str]
) -> tuple[Callable[[], Any], dict[str, Callable[[], Any]]]:
    """``(matmul, {method: fn})`` for one backend and size, on fp32 arrays of that backend.

    A spectral ``fn`` returns ``(new_state, direction)``, as a refresh step computes them."""
    from .. import backends as _backends
    from .. import kron
    from .._array import array_namespace

    raw = _inputs(n, seed)
    if backend == "numpy":
        arrs: dict[str, Any] = raw
        alpha: Any = np.asarray(1.0, dtype=np.float32)
    elif backend == "torch":
        import torch

        arrs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in raw.items()}
        alpha = torch.tensor(1.0, dtype=torch.float32)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    xp = array_namespace(arrs["G"])
    # the optimizers' default state: corrected eigenvalues V (math §4.10)
    kron_eigs = kron.KronState(alpha, arrs["B_C"], arrs["d_C"], arrs["B_K"], arrs["d_K"])
    state = kron_eigs._replace(V=xp.ones_like(arrs["G"]))
    g, a, b = arrs["G"], arrs["A"], arrs["B"]

    def spectral(cayley: str, st: kron.KronState = state) -> Callable[[], Any]:
        def fn() -> Any:
            # SpectralKron's refresh step: the refresh and the step's direction
            new, _, u = optim.refresh_and_direction(
                st,
                g,
                p=P_ROOT,
                norm_p=NORM_P,
                precond_lr=BETA2,
                damping=DAMPING,
                cayley=cayley,
                exp="first_order",
                cayley_terms=terms,
            )
            return new, u

        return fn

    def generic() -> Any:
        with _backends.generic_only():
            return spectral("quadratic")()

    table = {
        "spectral_quadratic": spectral("quadratic"),
        "spectral_kron_eigs": spectral("quadratic", kron_eigs),
        "spectral_quartic": spectral("quartic"),
        "spectral_neumann": spectral("neumann"),
        "spectral_generic": generic,
        "spectral_exact": spectral("exact"),
        "eigh_refresh": lambda: eigh_refresh(xp, arrs["L"], arrs["R"], g, p=P_ROOT, beta=EIGH_BETA),
        "muon_ns5": lambda: newton_schulz5(g),
    }

    def matmul() -> Any:
        return a @ b

    return matmul, {m: table[m] for m in methods}


def methods_for(backend: str) -> tuple[str, ...]:
    """Methods timed on ``backend`` (the generic-route row only where fast paths exist)."""
    if backend == "torch":
        return METHODS
    return tuple(m for m in METHODS if m != "spectral_generic")


# --------------------------------------------------------------------------- timing


@dataclass
class Result:
    """One (backend, n, method) cell: raw times, and ratios to the same-run matmul."""

    backend: str
    n: int
    method: str
    label: str
    #: one call per round
    times_s: list[float]
    #: every matmul sample of this (backend, n) (each the median of ``matmul_inner`` calls)
    matmul_times_s: list[float]
    median_s: float
    matmul_median_s: float
    #: The headline matmul-equivalents: median over rounds of (call time ÷ mean of the
    #: matmul samples taken just before and just after that call).
    ratio: float
    #: median(call) ÷ median(all matmul samples).
    ratio_of_medians: float
    #: min(call) ÷ min(matmul): the least-disturbed estimate.
    ratio_min: float
    products: int
    syrk: int
    other: str
    analytic: str
    flop_eq: float | None
    extra: dict[str, Any] = field(default_factory=dict)


def _minflt() -> int:
    """Minor page faults of this process so far (0 where getrusage is unavailable)."""
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        return 0


def _clock(fn: Callable[[], Any]) -> tuple[float, int]:
    """Wall time of one call and the minor page faults it took."""
    f0 = _minflt()
    t0 = time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    return t, _minflt() - f0


def _time_size(
    backend: str,
    n: int,
    *,
    repeats: int,
    terms: int,
    seed: int,
    methods: Sequence[str],
    budget_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Result]:
    matmul, fns = _callables(backend, n, terms, seed, methods)
    # Warm-up: BLAS/LAPACK thread pools, allocator, first-call dispatch; it also measures
    # one round, which sets the number of rounds when a time budget is given.
    t_mm = min(_clock(matmul)[0] for _ in range(3))
    # A matmul sample is the median of 3 calls while a call is short (timer noise), else 1.
    inner = 3 if t_mm < 0.02 else 1
    t_round = sum(_clock(fn)[0] for fn in fns.values())
    t_round += (len(fns) + 1) * inner * t_mm
    rounds = repeats
    if budget_s is not None and t_round * repeats > budget_s:
        rounds = max(min(3, repeats), int(budget_s / max(t_round, 1e-9)))

    def sample() -> tuple[float, int]:
        base = [_clock(matmul) for _ in range(inner)]
        return (statistics.median(t for t, _ in base), int(statistics.median(f for _, f in base)))

    mm: list[float] = []
    mm_flt: list[int] = []
    times: dict[str, list[float]] = {m: [] for m in fns}
    local: dict[str, list[float]] = {m: [] for m in fns}
    faults: dict[str, list[int]] = {m: [] for m in fns}
    order = list(fns)
    for r in range(rounds):
        # Every call sits between two matmul samples (a slow drift in machine load then
        # hits both); the method order rotates from round to round.
        before, f = sample()
        mm.append(before)
        mm_flt.append(f)
        k = r % len(order)
        for m in order[k:] + order[:k]:
            t, f = _clock(fns[m])
            after, fa = sample()
            mm.append(after)
            mm_flt.append(fa)
            times[m].append(t)
            faults[m].append(f)
            local[m].append(t / (0.5 * (before + after)))
            before = after
    mm_med = statistics.median(mm)
    out = []
    for m in fns:
        ts = times[m]
        a = analytic(m, terms)
        out.append(
            Result(
                backend=backend,
                n=n,
                method=m,
                label=LABELS[m].format(K=terms),
                times_s=ts,
                matmul_times_s=mm,
                median_s=statistics.median(ts),
                matmul_median_s=mm_med,
                ratio=statistics.median(local[m]),
                ratio_of_medians=statistics.median(ts) / mm_med,
                ratio_min=min(ts) / min(mm),
                products=a["products"],
                syrk=a["syrk"] if backend == "numpy" else 0,
                other=a["other"],
                analytic=analytic_label(m, backend, terms),
                flop_eq=flop_eq(m, backend, terms),
                extra={
                    "page_faults": int(statistics.median(faults[m])),
                    "matmul_page_faults": int(statistics.median(mm_flt)),
                    "rounds": rounds,
                    "matmul_calls_per_sample": inner,
                },
            )
        )
    if progress is not None:
        progress(
            f"[{backend} n={n}] matmul {1e3 * mm_med:.2f} ms, {rounds} rounds; "
            + ", ".join(f"{SHORT[x.method]} {x.ratio:.1f}" for x in out)
        )
    return out


def available_backends() -> tuple[str, ...]:
    """numpy, and torch when it is importable."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return ("numpy",)
    return BACKENDS


def set_malloc(mode: str) -> bool:
    """``"no-trim"``: keep freed heap memory in this process (glibc ``mallopt``).

    With glibc's defaults a freed multi-MB array is handed back to the OS, and the next
    one of that size is faulted in again page by page; on a VM these minor page faults can
    cost as much as the arithmetic of an elementwise pass. ``M_TRIM_THRESHOLD`` = 1 GiB and
    ``M_MMAP_THRESHOLD`` = 32 MiB keep such memory for reuse (what jemalloc/tcmalloc, the
    allocators PyTorch recommends for CPU work, do by default). Returns False where this is
    not glibc. ``"default"`` changes nothing.
    """
    if mode == "default":
        return True
    if mode != "no-trim":
        raise ValueError(f"unknown malloc mode {mode!r}")
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1
        return bool(ok and libc.mallopt(m_mmap_threshold, 32 << 20) == 1)
    except (OSError, AttributeError):
        return False


def run(
    sizes: Iterable[int] = DEFAULT_SIZES,
    backends: Iterable[str] | None = None,
    *,
    repeats: int = 5,
    terms: int = 1,
    seed: int = 0,
    budget_s: float | None = None,
    malloc: str = "default",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time every method for every (backend, n); returns ``{"machine", "config", "results"}``.

    ``results`` is a list of :class:`Result` as dicts. ``repeats`` rounds, each with its
    own matmul baseline (median of 3 calls) next to one call of every method, after one
    warm-up call of each. With ``budget_s``, a (backend, n) whose rounds would take longer
    than that gets fewer rounds (never fewer than 3). ``malloc``: see :func:`set_malloc`.
    """
    sizes = [int(n) for n in sizes]
    if not sizes or any(n < 2 for n in sizes):
        raise ValueError(f"sizes must be integers >= 2, got {sizes}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    backends = tuple(backends) if backends is not None else available_backends()
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {BACKENDS}")
    malloc_ok = set_malloc(malloc)
    load0 = report.loadavg()
    t0 = time.perf_counter()
    results: list[Result] = []
    for b in backends:
        for n in sizes:
            results.extend(
                _time_size(
                    b,
                    n,
                    repeats=repeats,
                    terms=terms,
                    seed=seed + n,
                    methods=methods_for(b),
                    budget_s=budget_s,
                    progress=progress,
                )
            )
    _inputs.cache_clear()
    info = report.machine_info(None, numpy=True, torch="torch" in backends)
    info["malloc"] = malloc if malloc_ok else f"{malloc} (not applied: not glibc)"
    info["loadavg_start"] = load0
    info["loadavg_end"] = report.loadavg()
    return {
        "machine": info,
        "config": {
            "sizes": sizes,
            "backends": list(backends),
            "repeats": repeats,
            "budget_s": budget_s,
            "cayley_terms": terms,
            "dtype": "float32",
            "p": P_ROOT,
            "beta2": BETA2,
            "seed": seed,
            "wall_s": time.perf_counter() - t0,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "target": {"method": TARGET_METHOD, "max_ratio": TARGET, "min_n": TARGET_MIN_N},
            "route": ROUTE,
        },
        "results": [asdict(r) for r in results],
    }


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``bench precond``."""
    report.add_sizes_argument(p, "square layer sizes (default 256 512 1024 2048; --quick: 128 256)")
    report.add_choices_argument(
        p, "--backend", BACKENDS, help="backends to time (default: numpy, and torch when installed)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds per size, median reported (default 5; --quick: 3)",
    )
    p.add_argument(
        "--terms",
        type=int,
        default=1,
        help="Neumann Cayley depth K of the spectral Neumann row (default 1)",
    )
    report.add_seed_argument(p)
    p.add_argument(
        "--budget",
        type=float,
        default=25.0,
        metavar="SECONDS",
        help="per (backend, n): fewer rounds (>= 3) where the rounds would take "
        "longer than this (default 25; 0: always --repeats)",
    )
    p.add_argument(
        "--malloc",
        choices=("default", "no-trim"),
        default="default",
        help="'no-trim': glibc mallopt so freed arrays are reused instead of "
        "being faulted in again (default: leave the allocator alone)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: n = 128 256, 3 rounds")
    report.add_threads_argument(p)
    report.add_output_arguments(
        p, docs="docs/benchmarks.md, docs/benchmarks_precond.json, docs/img/precond_cost.png"
    )
    report.add_quiet_argument(p)


def main(args: argparse.Namespace, rep: Any) -> int:
    """Entry point of ``bench precond`` (parsed ``args``); ``rep``, the report module
    (:mod:`.precond_report`, which imports this one), prints and writes the results."""
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    out = report.outputs(args, quick=args.quick)
    backends = tuple(args.backend) if args.backend else available_backends()
    threads = report.set_threads(args.threads, torch="torch" in backends)
    n_methods = sum(len(methods_for(b)) for b in backends)
    print(
        f"bench precond{' (quick)' if args.quick else ''}: {len(backends)} backends × "
        f"{len(sizes)} sizes ({' '.join(map(str, sizes))}) × {n_methods // len(backends)} "
        f"methods, {repeats} rounds each; {report.threads_line(threads)}",
        flush=True,
    )
    out.announce()
    progress = report.progress_printer(args.quiet)

    data = run(
        sizes,
        backends,
        repeats=repeats,
        terms=args.terms,
        seed=args.seed,
        budget_s=args.budget if args.budget > 0 else None,
        malloc=args.malloc,
        progress=progress,
    )
    data["config"]["quick"] = bool(args.quick)
    data["config"]["threads"] = threads
    return report.publish(out, data, rep)
