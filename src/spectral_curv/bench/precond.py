"""Preconditioner-cost microbenchmark: refresh + step in matmul-equivalents (fp32, CPU).

For a square n×n layer, each method's wall time is divided by the time of one n×n×n
matmul ``A @ B`` measured in the same run, on the same backend, interleaved with the
method's own repeats (so a burst of load from elsewhere hits both). Methods:

``spectral_quadratic`` (the target route)
    ``kron.precondition_and_update(cayley="quadratic", exp="first_order")``: the spectral
    scheme's refresh + preconditioned step in the rotated-gradient form (SPEC §4), with the
    Cayley map's quadratic Taylor polynomial ``I + 2X + 2X²`` (orthogonal to O(X⁴), as
    Neumann K = 1; ``maps.cayley_apply_quadratic``). Products: R = B_CᵀGB_K (2), W_C, W_K
    (2), step (2), per factor X², B·Q (2): 10.
``spectral_neumann``
    The same with ``cayley="neumann", cayley_terms=K``: per factor X², P·X², B·P (3 at
    K = 1): 12 at K = 1.
``spectral_generic`` (torch only)
    ``spectral_quadratic`` with the torch fast paths switched off
    (``backends.generic_only``): the pure array-API route that the core runs on any backend.
``spectral_exact``
    The same with ``cayley="exact"``: 8 products and one LU solve per factor.
``eigh_refresh``
    Shampoo/SOAP style: accumulate both Kronecker factors (``L ← βL + GGᵀ``,
    ``R ← βR + GᵀG``: 2 products), ``eigh`` of both n×n factors, and the preconditioned
    step ``Q_L[(Q_LᵀGQ_R) ⊙ (λ_L^{-1/2p} λ_R^{-1/2p}ᵀ)]Q_Rᵀ`` (4 products).
``muon_ns5``
    Muon's 5 quintic Newton–Schulz steps with coefficients (3.4445, −4.7750, 2.0315)
    (torch.optim.Muon / Keller Jordan's code), in fp32 instead of bf16: 3 products a step.

The spectral rows call the library's core exactly as a user would (numpy arrays, or torch
tensors through the array-API namespace plus the registered torch fast paths); the
baselines use each backend natively. Everything is float32.

"Products" counts n×n×n matrix products. numpy runs a product of the form ``A @ A.T``
(same buffer, transposed) as a BLAS ``syrk`` at half the flops; "flop-eq" is the flop
count in matmul units on that backend (syrk = ½, an LU solve ``(I−X)⁻¹(I+X)`` = 4/3;
``eigh`` is not given a flop count: it is dominated by a memory-bound tridiagonal
reduction, so a flop count says little about its time).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .report import replace_section

__all__ = [
    "BACKENDS",
    "DEFAULT_SIZES",
    "METHODS",
    "QUICK_SIZES",
    "TARGET",
    "TARGET_METHOD",
    "Result",
    "analytic",
    "machine_info",
    "markdown_section",
    "newton_schulz5",
    "plot",
    "run",
    "table",
    "write_markdown",
]

DEFAULT_SIZES = (256, 512, 1024, 2048)
QUICK_SIZES = (128, 256)
BACKENDS = ("numpy", "torch")
#: Acceptance target for the spectral refresh + step (``TARGET_METHOD``) at n >= 1024.
TARGET = 12.0
TARGET_METHOD = "spectral_quadratic"
TARGET_MIN_N = 1024
#: Muon's quintic Newton–Schulz coefficients (torch.optim.Muon, Keller Jordan's muon.py).
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5

METHODS = (
    "spectral_quadratic",
    "spectral_neumann",
    "spectral_generic",
    "spectral_exact",
    "eigh_refresh",
    "muon_ns5",
)
LABELS = {
    "spectral_quadratic": "spectral, quadratic Cayley",
    "spectral_neumann": "spectral, Neumann Cayley K={K}",
    "spectral_generic": "spectral, quadratic, generic route",
    "spectral_exact": "spectral, exact Cayley",
    "eigh_refresh": "eigh refresh (Shampoo/SOAP)",
    "muon_ns5": "Muon NS5",
}
SHORT = {
    "spectral_quadratic": "spec-quadratic",
    "spectral_neumann": "spec-Neumann",
    "spectral_generic": "spec-generic",
    "spectral_exact": "spec-exact",
    "eigh_refresh": "eigh",
    "muon_ns5": "Muon-NS5",
}

# Hyperparameters of the timed spectral call (values do not change the work done).
P_ROOT = 2
BETA2 = 0.1
EIGH_BETA = 0.95


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
    if method in ("spectral_quadratic", "spectral_generic"):
        return {
            "products": 10,
            "syrk": 4,
            "other": "",
            "other_flop_eq": 0.0,
            "breakdown": "R 2 + W_C,W_K 2 + step 2 + 2×(X², B·Q) quadratic Cayley",
        }
    if method == "spectral_neumann":
        prod, syrk = _neumann_products(terms)
        return {
            "products": 6 + 2 * prod,
            "syrk": 2 + 2 * syrk,
            "other": "",
            "other_flop_eq": 0.0,
            "breakdown": f"R 2 + W_C,W_K 2 + step 2 + 2×{prod} Cayley (K={terms})",
        }
    if method == "spectral_exact":
        return {
            "products": 8,
            "syrk": 2,
            "other": "2 solve",
            "other_flop_eq": 2 * 4.0 / 3.0,
            "breakdown": "R 2 + W_C,W_K 2 + step 2 + 2×(LU solve + B·C)",
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


def flop_eq(method: str, backend: str, terms: int = 1) -> float | None:
    """Flops in matmul units on ``backend`` (numpy: syrk = ½ a matmul)."""
    a = analytic(method, terms)
    if a["other_flop_eq"] is None:
        return None
    half = 0.5 * a["syrk"] if backend == "numpy" else 0.0
    return a["products"] - half + a["other_flop_eq"]


def analytic_label(method: str, backend: str, terms: int = 1) -> str:
    """``"12"``, ``"8+2 solve"``, ``"6+2 eigh"`` … (products, plus other kernels)."""
    a = analytic(method, terms)
    return f"{a['products']}" + (f"+{a['other']}" if a["other"] else "")


# --------------------------------------------------------------------------- methods


def newton_schulz5(xp: Any, g: Any, steps: int = NS_STEPS, eps: float = 1e-7) -> Any:
    """Muon's quintic Newton–Schulz orthogonalisation (Keller Jordan's ``muon.py``), generic.

    ``X ← G/‖G‖_F`` (transposed if tall), then ``A = XXᵀ``, ``B = bA + cA²``,
    ``X ← aX + BX`` for ``steps`` steps; computed in ``g``'s dtype (fp32 here, bf16 in
    the original).
    """
    a, b, c = NS_COEFFS
    tall = g.shape[-2] > g.shape[-1]
    x = g.mT if tall else g
    x = x / (xp.sqrt(xp.sum(x * x)) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        upd = b * gram + c * (gram @ gram)
        x = a * x + upd @ x
    return x.mT if tall else x


def _newton_schulz5_torch(g: Any, steps: int = NS_STEPS, eps: float = 1e-7) -> Any:
    """``torch.optim.Muon``'s ``_zeropower_via_newtonschulz`` loop (fused ``addmm``), fp32."""
    import torch

    a, b, c = NS_COEFFS
    x = g.T if g.size(0) > g.size(1) else g
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        upd = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, upd, x, beta=a)
    return x.T if g.size(0) > g.size(1) else x


def eigh_refresh(
    xp: Any, left: Any, right: Any, g: Any, *, p: float = P_ROOT, beta: float = EIGH_BETA
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
    """``(matmul, {method: fn})`` for one backend and size, on fp32 arrays of that backend."""
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
    state = kron.KronState(alpha, arrs["B_C"], arrs["d_C"], arrs["B_K"], arrs["d_K"])
    g, a, b = arrs["G"], arrs["A"], arrs["B"]

    def spectral(cayley: str) -> Callable[[], Any]:
        def fn() -> Any:
            return kron.precondition_and_update(
                state,
                g,
                p=P_ROOT,
                beta2=BETA2,
                cayley=cayley,
                cayley_terms=terms,
                exp="first_order",
            )

        return fn

    def generic() -> Any:
        with _backends.generic_only():
            return spectral("quadratic")()

    if backend == "torch":

        def muon() -> Any:
            return _newton_schulz5_torch(g)
    else:

        def muon() -> Any:
            return newton_schulz5(xp, g)

    table = {
        "spectral_quadratic": spectral("quadratic"),
        "spectral_neumann": spectral("neumann"),
        "spectral_generic": generic,
        "spectral_exact": spectral("exact"),
        "eigh_refresh": lambda: eigh_refresh(xp, arrs["L"], arrs["R"], g),
        "muon_ns5": muon,
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
    load0 = _loadavg()
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
    info = machine_info(backends)
    info["malloc"] = malloc if malloc_ok else f"{malloc} (not applied: not glibc)"
    info["loadavg_start"] = load0
    info["loadavg_end"] = _loadavg()
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
        },
        "results": [asdict(r) for r in results],
    }


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


def _openblas_threads() -> int | None:
    """numpy's OpenBLAS thread count, via threadpoolctl or the loaded library's symbol."""
    try:
        import threadpoolctl

        for info in threadpoolctl.threadpool_info():
            if info.get("internal_api") in ("openblas", "mkl", "blis"):
                return int(info["num_threads"])
    except Exception:  # threadpoolctl is optional
        pass
    with contextlib.suppress(OSError):
        libs = {
            line.split()[-1]
            for line in Path("/proc/self/maps").read_text().splitlines()
            if "openblas" in line.lower() and ".so" in line
        }
        for path in sorted(libs):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for sym in (
                "scipy_openblas_get_num_threads64_",
                "scipy_openblas_get_num_threads",
                "openblas_get_num_threads64_",
                "openblas_get_num_threads",
            ):
                f = getattr(lib, sym, None)
                if f is not None:
                    f.restype = ctypes.c_int
                    return int(f())
    return None


def _numpy_blas() -> str:
    with contextlib.suppress(Exception):
        cfg = np.show_config(mode="dicts")  # type: ignore[call-arg]
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    return "unknown"


def machine_info(backends: Iterable[str] = ("numpy",)) -> dict[str, Any]:
    """CPU, core counts, library versions and BLAS thread counts of this process."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": _numpy_blas(),
        "numpy_blas_threads": _openblas_threads(),
        "thread_env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            if k in os.environ
        },
    }
    if "torch" in backends:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_blas"] = "MKL" if torch.backends.mkl.is_available() else "non-MKL"
    return info


# --------------------------------------------------------------------------- reports


def _fmt(x: float | None, nd: int = 1) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def table(data: dict[str, Any]) -> str:
    """Plain-text table: one line per (backend, n, method), measured beside analytic."""
    head = (
        f"{'backend':<7} {'n':>5} {'method':<40} {'ms':>9} {'matmul ms':>9} "
        f"{'mm-eq':>6} {'med/med':>7} {'min':>6} {'products':>10} {'flop-eq':>7}"
    )
    lines = [head, "-" * len(head)]
    prev = None
    for r in data["results"]:
        key = (r["backend"], r["n"])
        if prev is not None and key != prev:
            lines.append("")
        prev = key
        lines.append(
            f"{r['backend']:<7} {r['n']:>5} {r['label']:<40} {1e3 * r['median_s']:>9.2f} "
            f"{1e3 * r['matmul_median_s']:>9.2f} {r['ratio']:>6.1f} {r['ratio_of_medians']:>7.1f} "
            f"{r['ratio_min']:>6.1f} {r['analytic']:>10} {_fmt(r['flop_eq']):>7}"
        )
    lines.append("")
    lines.append(
        "mm-eq = median over rounds of call time ÷ the matmul samples just before and "
        "after it; med/med = median(call)/median(matmul); min = min/min."
    )
    lines.append(
        "products = analytic n×n×n products per call; flop-eq = their flops in "
        "matmul units on that backend (numpy: A·Aᵀ runs as syrk = ½)."
    )
    verdict = target_verdict(data)
    if verdict:
        lines.extend("target on " + v for v in verdict.splitlines())
    return "\n".join(lines)


def target_verdict(data: dict[str, Any]) -> str:
    """One line per backend: is the target route ≤ TARGET at n ≥ TARGET_MIN_N?"""
    terms = data["config"]["cayley_terms"]
    method = data["config"].get("target", {}).get("method", TARGET_METHOD)
    out = []
    for b in data["config"]["backends"]:
        rows = [
            r
            for r in data["results"]
            if r["backend"] == b and r["method"] == method and r["n"] >= TARGET_MIN_N
        ]
        if not rows:
            continue
        worst = max(rows, key=lambda r: r["ratio"])
        ok = all(r["ratio"] <= TARGET for r in rows)
        cells = ", ".join(f"n={r['n']}: {r['ratio']:.1f}" for r in rows)
        out.append(
            f"{b}: {'MET' if ok else 'NOT MET'} ({cells}; worst {worst['ratio']:.1f}) "
            f"for ≤ {TARGET:g} mm-eq, {LABELS[method].format(K=terms)}, "
            f"n ≥ {TARGET_MIN_N}"
        )
    return "\n".join(out)


def _wide(data: dict[str, Any], backend: str) -> list[str]:
    rows = [r for r in data["results"] if r["backend"] == backend]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    sizes = sorted({r["n"] for r in rows})
    terms = data["config"]["cayley_terms"]
    cell = {(r["n"], r["method"]): r for r in rows}
    head = (
        "| n | matmul (ms) | "
        + " | ".join(LABELS[m].format(K=terms) for m in methods)
        + " | rounds | page faults / call (spectral; matmul) |"
    )
    lines = [head, "|" + "---:|" * (4 + len(methods))]
    prods = " | ".join(analytic_label(m, backend, terms) for m in methods)
    flops = " | ".join(_fmt(flop_eq(m, backend, terms)) for m in methods)
    lines.append(f"| *products (analytic)* | | {prods} | | |")
    lines.append(f"| *flop-eq on {backend}* | | {flops} | | |")
    for n in sizes:
        mm = next(r["matmul_median_s"] for r in rows if r["n"] == n)
        vals = []
        for m in methods:
            r = cell[(n, m)]
            v = f"{r['ratio']:.1f}"
            if m == TARGET_METHOD and n >= TARGET_MIN_N:
                v = f"**{v}**"
            vals.append(v)
        ex = cell[(n, methods[0])].get("extra", {})
        pf = f"{ex.get('page_faults', '?')}; {ex.get('matmul_page_faults', '?')}"
        lines.append(
            f"| {n} | {1e3 * mm:.2f} | " + " | ".join(vals) + f" | {ex.get('rounds', '?')} | {pf} |"
        )
    return lines


def markers(tag: str = "precond") -> tuple[str, str]:
    """The BEGIN/END comment lines that delimit a generated section in the markdown."""
    return (
        f"<!-- {tag}-bench:begin (written by `python -m spectral_curv.bench precond`) -->",
        f"<!-- {tag}-bench:end -->",
    )


def section_tag(data: dict[str, Any]) -> str:
    """``precond``, or ``precond-<malloc mode>`` for a run with a non-default allocator."""
    mode = str(data["machine"].get("malloc", "default")).split()[0]
    return "precond" if mode == "default" else f"precond-{mode}"


def markdown_section(
    data: dict[str, Any],
    *,
    plot_path: str | None = None,
    json_path: str | None = None,
    notes: str = "",
) -> str:
    """The generated section: machine, one table per backend, verdict, and the raw numbers
    (a link to ``json_path`` where they were written, else inline JSON)."""
    m, c = data["machine"], data["config"]
    begin, end = markers(section_tag(data))
    title = "Preconditioner cost: refresh + step in matmul-equivalents"
    mode = str(m.get("malloc", "default"))
    if not mode.startswith("default"):
        title += f" (malloc: {mode})"
    lines = [begin, f"## {title}", ""]
    rounds = sorted({r.get("extra", {}).get("rounds", c["repeats"]) for r in data["results"]})
    rtxt = (
        f"{rounds[0]}"
        if len(rounds) == 1
        else f"{rounds[-1]} (or {rounds[0]} where a "
        f"size's rounds would exceed the {c.get('budget_s')} s budget; see 'rounds')"
    )
    cmd = "python -m spectral_curv.bench precond" + (
        "" if mode.startswith("default") else f" --malloc {mode.split()[0]}"
    )
    lines.append(
        "Time of one call ÷ time of one n×n×n fp32 matmul `A @ B` measured in the same run "
        f"on the same backend: median over {rtxt} rounds of (call time ÷ mean of the matmul "
        "samples taken just before and just after the call; a sample is the median of 3 "
        "matmuls below 20 ms, else one), after one warm-up call of each. Square layers, "
        f"float32, CPU. Reproduce with `{cmd}`."
    )
    lines.append("")
    lines.append(
        "**Machine.** "
        + "; ".join(
            filter(
                None,
                [
                    f"{m['cpu']}",
                    f"{m['cpus_usable']} usable CPU cores (os.cpu_count() = {m['cpu_count']})",
                    f"Python {m['python']}",
                    f"numpy {m['numpy']} ({m['numpy_blas']}, "
                    f"{m['numpy_blas_threads']} BLAS threads)",
                    (
                        f"torch {m['torch']} ({m['torch_blas']}, {m['torch_threads']} threads)"
                        if "torch" in m
                        else ""
                    ),
                    f"malloc {mode}",
                    f"load average {m.get('loadavg_start')} → {m.get('loadavg_end')}",
                    f"{c['date']}, whole run {c['wall_s']:.0f} s",
                ],
            )
        )
        + "."
    )
    lines.append("")
    for b in c["backends"]:
        lines.append(
            f"**{b}**"
            + (
                " (spectral rows: the core through the array-API "
                "namespace, with the registered torch fast paths; "
                "'generic route': fast paths off)"
                if b == "torch"
                else " (spectral rows: the core on numpy arrays)"
            )
        )
        lines.append("")
        lines.extend(_wide(data, b))
        lines.append("")
    verdict = target_verdict(data)
    if verdict:
        lines.append("**Target.** " + verdict.replace("\n", "; "))
        lines.append("")
    if plot_path:
        lines.append(f"![matmul-equivalents vs n]({plot_path})")
        lines.append("")
    if notes:
        lines.append(notes.strip())
        lines.append("")
    if json_path:
        lines.append(f"Raw numbers (every round): [`{Path(json_path).name}`]({json_path}).")
        lines.append("")
    else:
        lines.append("<details><summary>Raw numbers (JSON)</summary>")
        lines.append("")
        lines.append("```json")
        lines.append(_compact_json(data))
        lines.append("```")
        lines.append("")
        lines.append("</details>")
    lines.append(end)
    return "\n".join(lines) + "\n"


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    """The JSON without per-round lists rounded to µs (kept short for the markdown)."""
    res = []
    for r in data["results"]:
        r = dict(r)
        r["times_s"] = [round(t, 6) for t in r["times_s"]]
        r["matmul_times_s"] = [round(t, 6) for t in r["matmul_times_s"]]
        for k in ("median_s", "matmul_median_s"):
            r[k] = round(r[k], 6)
        for k in ("ratio", "ratio_of_medians", "ratio_min"):
            r[k] = round(r[k], 3)
        r.pop("extra", None)
        res.append(r)
    return {"machine": data["machine"], "config": data["config"], "results": res}


def _compact_json(data: dict[str, Any]) -> str:
    """Valid JSON with one line for the machine, one for the config, one per result."""
    c = _compact(data)
    res = c["results"]
    lines = [
        "{",
        f' "machine": {json.dumps(c["machine"], ensure_ascii=False)},',
        f' "config": {json.dumps(c["config"], ensure_ascii=False)},',
        ' "results": [',
    ]
    lines += [
        f"  {json.dumps(r, ensure_ascii=False)}" + ("," if i + 1 < len(res) else "")
        for i, r in enumerate(res)
    ]
    lines += [" ]", "}"]
    return "\n".join(lines)


def write_markdown(path: str | os.PathLike[str], section: str) -> None:
    """Replace the section of ``path`` between ``section``'s own markers, or append it."""
    begin = section.split("\n", 1)[0]
    end = next(
        line
        for line in section.splitlines()
        if line.startswith("<!-- ") and line.endswith("-bench:end -->")
    )
    replace_section(path, section, begin, end, "# Benchmarks\n\n")


def plot(data: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Matmul-equivalents vs n (log-x), one line per method and backend; PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, m = data["config"], data["machine"]
    colors = {
        "spectral_quadratic": "C0",
        "spectral_neumann": "C4",
        "spectral_generic": "C9",
        "spectral_exact": "C2",
        "eigh_refresh": "C3",
        "muon_ns5": "C1",
    }
    styles = {"numpy": ("-", "o"), "torch": ("--", "s")}
    fig, ax = plt.subplots(figsize=(8.0, 5.2), dpi=130)
    for b in c["backends"]:
        for meth in METHODS:
            rows = sorted(
                (r for r in data["results"] if r["backend"] == b and r["method"] == meth),
                key=lambda r: r["n"],
            )
            if not rows:
                continue
            ls, mk = styles.get(b, ("-", "o"))
            ax.plot(
                [r["n"] for r in rows],
                [r["ratio"] for r in rows],
                ls,
                marker=mk,
                color=colors[meth],
                label=f"{LABELS[meth].format(K=c['cayley_terms'])} [{b}]",
            )
    ax.axhline(
        TARGET,
        color="k",
        lw=0.8,
        ls=":",
        label=f"target ≤ {TARGET:g} ({LABELS[TARGET_METHOD]}, n ≥ {TARGET_MIN_N})",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({r["n"] for r in data["results"]})
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(n) for n in sizes])
    ax.minorticks_off()
    yt = [
        t
        for t in (5, 8, 10, 12, 15, 20, 30, 50, 70, 100, 200, 500)
        if min(r["ratio"] for r in data["results"]) * 0.8
        <= t
        <= max(r["ratio"] for r in data["results"]) * 1.25
    ]
    ax.set_yticks(yt)
    ax.set_yticklabels([str(t) for t in yt])
    ax.set_xlabel("layer size n (square n×n weight)")
    ax.set_ylabel("time per call  [matmul-equivalents, log scale]")
    threads = m.get("numpy_blas_threads")
    ax.set_title(
        "Preconditioner cost per step, fp32 CPU "
        f"({m.get('cpus_usable')} cores, {threads} BLAS threads)\n"
        "time ÷ time of one n×n×n matmul, same run",
        fontsize=10,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(args: Any) -> int:
    """Entry point used by ``python -m spectral_curv.bench precond`` (parsed ``args``)."""
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)

    def progress(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    data = run(
        sizes,
        args.backend,
        repeats=repeats,
        terms=args.terms,
        seed=args.seed,
        budget_s=args.budget if args.budget > 0 else None,
        malloc=args.malloc,
        progress=progress,
    )
    print(table(data))
    if args.json:
        text = json.dumps(data, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text + "\n")
    plot_path = args.plot
    if plot_path:
        try:
            plot(data, plot_path)
            print(f"wrote {plot_path}", file=sys.stderr)
        except ImportError as e:
            print(f"no plot ({e}); pip install matplotlib", file=sys.stderr)
            plot_path = None
    if args.out:
        here = Path(args.out).resolve().parent

        def rel(path: str | None) -> str | None:
            return None if not path or path == "-" else os.path.relpath(Path(path).resolve(), here)

        write_markdown(
            args.out, markdown_section(data, plot_path=rel(plot_path), json_path=rel(args.json))
        )
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
