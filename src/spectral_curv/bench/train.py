"""Training benchmark: SpectralKron vs AdamW, Muon, SOAP, Shampoo and PSGD Kron on real data.

``spectral-curv bench train`` (or ``python -m spectral_curv.bench train``) trains the same
models with several optimizers on offline data (:mod:`spectral_curv.bench.data`:
Fashion-MNIST 60k/10k from the Debian package, or scikit-learn's digits) and writes a
markdown section (``docs/benchmarks_train.md``), a JSON of every curve
(``docs/benchmarks_train.json``) and PNG plots (``docs/img/train_*.png``).
``spectral-curv demo`` is the small fixed-hyperparameter version (one MLP, a few
optimizers, 3 seeds, under 3 minutes on 2 CPU cores) that prints a table.

Models (``--models``): ``mlp`` (784-256-256-10, ReLU), ``cnn`` (3×3 convolutions of 16, 32
and 64 channels, 2×2 max-pool after the first two, global average pooling, a 128-unit
hidden layer), ``vit`` (7×7 patches →
16 tokens on 28×28 images (2×2 on 8×8 digits), width 64, 2 pre-norm blocks with 4 heads
and a 4× GELU MLP, learned position embedding, mean pooling). Every classifier's last
layer is called ``head``.

Optimizers (``--optimizers``; ``key``: what it is, its key knob in brackets):

``adamw``            ``torch.optim.AdamW`` [β₂].
``muon_bf16``        ``torch.optim.Muon`` (Newton–Schulz in bf16, very slow on a CPU) on
                     the 2-D weights except the head, ``torch.optim.AdamW`` on the rest
                     (head, biases, norms, conv kernels, position embedding) [AdamW's lr].
``muon_fp32``        the same with :class:`spectral_curv.bench.optim.MuonFP32` (torch's
                     Muon update, Newton–Schulz in fp32) [AdamW's lr].
``spectral_p{p}_{c}`` ``spectral_curv.torch.SpectralKron(p=p, cayley=c)`` on every
                     parameter, ``c`` = ``quad`` (the default truncated ``"quadratic"``
                     Cayley) or ``exact`` [precond_lr].
``soap``             ``heavyball.SOAP`` [shampoo_beta].
``shampoo``          :class:`spectral_curv.bench.optim.EighRefresh` (EMA Kronecker factors,
                     ``eigh`` inverse 4th roots every 2 steps, heavy-ball momentum) with
                     decoupled weight decay: heavyball 3.2.1 ships no plain Shampoo (only
                     KL-Shampoo) [factor EMA β].
``psgd_kron``        ``heavyball.PSGDKron`` [precond_lr].

heavyball's optimizers run with ``torch.compile`` switched off (``heavyball.utils.
compile_mode = None``): inductor on a 2-core CPU would spend minutes compiling.

Protocol. Each (model, optimizer) gets the same tuning budget: ``--tune-budget`` trials
(trial 0: the registry's defaults; the others drawn at random, log-uniform for lr and
weight decay, over the optimizer's own lr / weight-decay / knob ranges, from one seeded
generator), each ``--tune-steps`` steps on the training split with seed 0, scored by the
loss on a validation split carved out of the training set (never the test set). The best
trial is re-run for ``--seeds`` seeds (model init and batch order change) for ``--steps``
steps, evaluating the test set every ``--eval-every`` steps.

Per step three clock readings: ``t0 | zero_grad, forward, loss, backward | t1 | opt.step()
| t2``; the wall-clock of a curve is the cumulative ``t2 − t0`` (evaluation excluded).
Optimizer step time is the median ``t2 − t1`` and is reported as a ratio to AdamW's in the
same run. Memory: the optimizer state's bytes (every tensor in ``opt.state``) and the
peak resident set size during the run above the RSS at its start (Linux: VmHWM from
``/proc/self/status`` after resetting it through ``/proc/self/clear_refs``, freed heap
returned with ``malloc_trim`` between runs; elsewhere ``ru_maxrss``, a process-lifetime
peak, and the table says so). Everything is fp32 on the CPU.

No framework is imported at module import time (torch, matplotlib, tqdm and heavyball are
imported by the functions that need them), so the CLI parses without them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .report import replace_section

__all__ = [
    "DEFAULT_BENCH_OPTIMIZERS",
    "DEMO",
    "MODELS",
    "OptSpec",
    "add_arguments",
    "add_demo_arguments",
    "build_model",
    "demo_main",
    "main",
    "optimizer_registry",
    "run_benchmark",
    "train_run",
]

MODELS = ("mlp", "cnn", "vit")
SPECTRAL_KEYS = ("spectral_p2_quad", "spectral_p2_exact", "spectral_p1_quad", "spectral_p1_exact")
#: The paper's basis update (the default before the damped rule), kept for comparison.
PAPER_KEYS = (
    "spectral_p2_quad_paper",
    "spectral_p2_exact_paper",
    "spectral_p1_quad_paper",
    "spectral_p1_exact_paper",
)
ALL_OPTIMIZERS = (
    "adamw",
    "muon_bf16",
    "muon_fp32",
    *SPECTRAL_KEYS,
    *PAPER_KEYS,
    "soap",
    "shampoo",
    "psgd_kron",
)
#: Every optimizer but the paper-rule comparisons (run them with ``--optimizers``).
DEFAULT_BENCH_OPTIMIZERS = tuple(k for k in ALL_OPTIMIZERS if k not in PAPER_KEYS)
JSON_PATH = "docs/benchmarks_train.json"
PRECOND_JSON = "benchmarks_precond.json"  # next to the markdown file
MD_PATH = "docs/benchmarks_train.md"

#: The demo's fixed configuration. Hyperparameters: one run of this module's tuner on the
#: demo's own setting (Fashion-MNIST MLP, batch 128, 150 steps, 5000-image validation split,
#: seed 0; 4 trials per optimizer, trial 0 = registry defaults), 2026-11-23, 1 torch thread::
#:
#:     spectral-curv bench train --models mlp --optimizers adamw muon_fp32 spectral_p2_quad \
#:         --seeds 1 --steps 150 --tune-steps 150 --tune-budget 4 --eval-every 150 --threads 1
#:
#: best validation losses: AdamW 0.476 (the defaults), Muon fp32 0.379 (trial 1),
#: SpectralKron p=2 quad 0.472 (trial 1). The exact-Cayley variant reuses the quadratic
#: one's values (same preconditioner, only the Cayley map differs); p = 1 is not in the
#: demo (at the registry's lr it diverged in a first try; ``bench train`` tunes it). The
#: same values are used on the digits fallback.
DEMO: dict[str, Any] = {
    "model": "mlp",
    "steps": 150,
    "batch": 128,
    "eval_every": 15,
    "seeds": 2,
    "val_size": 5000,
    "optimizers": ("adamw", "muon_fp32", "spectral_p2_quad", "spectral_p2_exact"),
    "hparams": {
        "adamw": {"lr": 2e-3, "weight_decay": 1e-2, "beta2": 0.999},
        "muon_fp32": {"lr": 7.85e-3, "weight_decay": 1.13e-4, "adam_lr": 7.26e-3},
        "spectral_p2_quad": {"lr": 1.22e-4, "weight_decay": 1.95e-3, "precond_lr": 0.448},
        "spectral_p2_exact": {"lr": 1.22e-4, "weight_decay": 1.95e-3, "precond_lr": 0.448},
        # the paper's basis update (the default before the damped rule), for comparison
        "spectral_p2_quad_paper": {"lr": 1.22e-4, "weight_decay": 1.95e-3, "precond_lr": 0.448},
        "spectral_p2_exact_paper": {"lr": 1.22e-4, "weight_decay": 1.95e-3, "precond_lr": 0.448},
    },
    "hparams_source": (
        "a 4-trial random search per optimizer (150 steps, seed 0, validation loss on 5000 "
        "held-out training images) with `spectral-curv bench train --models mlp --optimizers "
        "adamw muon_fp32 spectral_p2_quad --seeds 1 --steps 150 --tune-steps 150 "
        "--tune-budget 4 --eval-every 150 --threads 1`; exact Cayley reuses the quadratic "
        "variant's values"
    ),
}


# --------------------------------------------------------------------------- models


def build_model(name: str, image_shape: Sequence[int], n_classes: int = 10) -> Any:
    """``mlp``, ``cnn`` or ``vit`` for ``(C, H, W)`` images; the last layer is ``head``."""
    import torch
    from torch import nn

    c, h, w = image_shape

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(c * h * w, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU()
            )
            self.head = nn.Linear(256, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # all-convolutional with global average pooling: no wide flatten → dense layer
            # (a 1568 → 64 one would give every Kronecker method a 1568-sided factor)
            self.body = nn.Sequential(
                nn.Conv2d(c, 16, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(64, 128),  # a hidden matrix for Muon (2-D weights only)
                nn.ReLU(),
            )
            self.head = nn.Linear(128, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    class ViT(nn.Module):
        def __init__(self, width: int = 64, depth: int = 2, heads: int = 4) -> None:
            super().__init__()
            self.patch = 7 if h % 7 == 0 and w % 7 == 0 else 2
            if h % self.patch or w % self.patch:
                raise ValueError(f"ViT: image {h}×{w} is not divisible into patches")
            tokens = (h // self.patch) * (w // self.patch)
            self.embed = nn.Linear(c * self.patch * self.patch, width)
            self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
            self.blocks = nn.ModuleList(
                [
                    nn.TransformerEncoderLayer(
                        width,
                        heads,
                        4 * width,
                        dropout=0.0,
                        activation="gelu",
                        batch_first=True,
                        norm_first=True,
                    )
                    for _ in range(depth)
                ]
            )
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, p = x.shape[0], self.patch
            x = x.unfold(2, p, p).unfold(3, p, p)  # B C h w p p
            x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)
            x = self.embed(x) + self.pos
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x).mean(1))

    classes = {"mlp": MLP, "cnn": CNN, "vit": ViT}
    if name not in classes:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    return classes[name]()


# --------------------------------------------------------------------------- optimizers


@dataclass
class OptSpec:
    """An optimizer of the benchmark: ``build(model, hp)`` returns it; ``space`` maps each
    tuned hyperparameter to ``("log", lo, hi)`` or ``("choice", values)``."""

    key: str
    label: str
    family: str
    build: Callable[[Any, dict[str, Any]], Any]
    defaults: dict[str, Any]
    space: dict[str, tuple[Any, ...]]
    knob: str
    notes: str = ""
    requires: str | None = None  # module that must import


def _muon_split(model: Any) -> tuple[list[Any], list[Any]]:
    """(2-D weights except the head: Muon's, everything else: AdamW's)."""
    hidden, rest = [], []
    for n, p in model.named_parameters():
        (hidden if p.ndim == 2 and not n.startswith("head.") else rest).append(p)
    if not hidden:
        raise ValueError("Muon: the model has no 2-D hidden weight (only the head)")
    return hidden, rest


class _DecoupledWD:
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


def _heavyball() -> Any:
    import heavyball
    import heavyball.utils

    heavyball.utils.compile_mode = None  # no torch.compile: inductor on a CPU takes minutes
    heavyball.utils.compile_mode_recommended_to_none = None
    return heavyball


def optimizer_registry() -> dict[str, OptSpec]:
    """Every optimizer of the benchmark, keyed as in ``--optimizers``."""
    import torch

    from ..torch import SpectralKron
    from .optim import EighRefresh, MuonFP32, _Chain

    lr_wd = {"weight_decay": ("log", 1e-4, 1e-1)}

    def adamw(model: Any, hp: dict[str, Any]) -> Any:
        return torch.optim.AdamW(
            model.parameters(),
            lr=hp["lr"],
            betas=(0.9, hp["beta2"]),
            weight_decay=hp["weight_decay"],
        )

    def muon(inner: Any) -> Callable[[Any, dict[str, Any]], Any]:
        def build(model: Any, hp: dict[str, Any]) -> Any:
            hidden, rest = _muon_split(model)
            return _Chain(
                inner(hidden, lr=hp["lr"], weight_decay=hp["weight_decay"]),
                torch.optim.AdamW(rest, lr=hp["adam_lr"], weight_decay=hp["weight_decay"]),
            )

        return build

    def spectral(p: float, cayley: str, **extra: Any) -> Callable[[Any, dict[str, Any]], Any]:
        def build(model: Any, hp: dict[str, Any]) -> Any:
            return SpectralKron(
                model.parameters(),
                lr=hp["lr"],
                p=p,
                cayley=cayley,
                precond_lr=hp["precond_lr"],
                weight_decay=hp["weight_decay"],
                update_interval=hp.get("update_interval", 2),
                **extra,
            )

        return build

    def soap(model: Any, hp: dict[str, Any]) -> Any:
        return _heavyball().SOAP(
            model.parameters(),
            lr=hp["lr"],
            weight_decay=hp["weight_decay"],
            shampoo_beta=hp["shampoo_beta"],
        )

    def psgd(model: Any, hp: dict[str, Any]) -> Any:
        return _heavyball().PSGDKron(
            model.parameters(),
            lr=hp["lr"],
            weight_decay=hp["weight_decay"],
            precond_lr=hp["precond_lr"],
        )

    def shampoo(model: Any, hp: dict[str, Any]) -> Any:
        params = list(model.parameters())
        return _DecoupledWD(
            EighRefresh(params, lr=hp["lr"], beta=hp["beta"], update_interval=2),
            params,
            hp["lr"],
            hp["weight_decay"],
        )

    muon_space = {"lr": ("log", 3e-3, 1e-1), **lr_wd, "adam_lr": ("log", 3e-4, 1e-2)}
    muon_def = {"lr": 2e-2, "weight_decay": 1e-2, "adam_lr": 2e-3}
    specs = [
        OptSpec(
            "adamw",
            "AdamW",
            "adamw",
            adamw,
            {"lr": 2e-3, "weight_decay": 1e-2, "beta2": 0.999},
            {"lr": ("log", 3e-4, 1e-2), **lr_wd, "beta2": ("choice", (0.95, 0.99, 0.999))},
            "beta2",
            notes="torch.optim.AdamW",
        )
    ]
    if hasattr(torch.optim, "Muon"):
        specs.append(
            OptSpec(
                "muon_bf16",
                "Muon bf16-NS + AdamW",
                "muon",
                muon(torch.optim.Muon),
                dict(muon_def),
                dict(muon_space),
                "adam_lr",
                notes="torch.optim.Muon (Newton–Schulz in bfloat16)",
            )
        )
    specs.append(
        OptSpec(
            "muon_fp32",
            "Muon fp32-NS + AdamW",
            "muon",
            muon(MuonFP32),
            dict(muon_def),
            dict(muon_space),
            "adam_lr",
            notes="bench.optim.MuonFP32: torch.optim.Muon's update, fp32 NS",
        )
    )
    # Each variant: (key suffix, cayley, extra options, label suffix, description).
    # "_paper": the paper's basis update U_ij = −W_ij/(d_i − d_j) with the Frobenius cap and
    # (exact mode) no re-orthonormalisation — the library's default before the damped rule.
    variants = (
        ("quad", "quadratic", {}, "quad", "truncated (quadratic) Cayley, damped basis update"),
        ("exact", "exact", {}, "exact", "exact Cayley, damped basis update"),
        (
            "quad_paper",
            "quadratic",
            {"rotation": "paper"},
            "quad (paper rule)",
            "quadratic Cayley, paper's basis update, Frobenius cap 0.25",
        ),
        (
            "exact_paper",
            "exact",
            {"rotation": "paper", "reorth_interval": 0},
            "exact (paper rule)",
            "exact Cayley, paper's basis update, no re-orthonormalisation",
        ),
    )
    for p in (2, 1):
        for c, cayley, extra, lab, desc in variants:
            lo, hi, lr0 = (1e-4, 3e-3, 3e-4) if p == 2 else (1e-6, 1e-3, 1e-5)
            specs.append(
                OptSpec(
                    f"spectral_p{p}_{c}",
                    f"SpectralKron p={p} {lab}",
                    "spectral",
                    spectral(float(p), cayley, **extra),
                    {"lr": lr0, "weight_decay": 1e-2, "precond_lr": 0.1},
                    {"lr": ("log", lo, hi), **lr_wd, "precond_lr": ("log", 0.01, 0.5)},
                    "precond_lr",
                    notes=f"spectral_curv.torch.SpectralKron, p={p}, {desc}",
                )
            )
    specs.append(
        OptSpec(
            "soap",
            "SOAP (heavyball)",
            "soap",
            soap,
            {"lr": 3e-3, "weight_decay": 1e-2, "shampoo_beta": 0.95},
            {"lr": ("log", 3e-4, 1e-2), **lr_wd, "shampoo_beta": ("choice", (0.9, 0.95, 0.99))},
            "shampoo_beta",
            notes="heavyball.SOAP, torch.compile off",
            requires="heavyball",
        )
    )
    specs.append(
        OptSpec(
            "shampoo",
            "Shampoo (eigh reference)",
            "shampoo",
            shampoo,
            {"lr": 3e-4, "weight_decay": 1e-2, "beta": 0.95},
            {"lr": ("log", 1e-4, 3e-3), **lr_wd, "beta": ("choice", (0.9, 0.95, 0.99))},
            "beta",
            notes="bench.optim.EighRefresh (L^-1/4 G R^-1/4, eigh every 2 steps)"
            " + decoupled weight decay",
        )
    )
    specs.append(
        OptSpec(
            "psgd_kron",
            "PSGD Kron (heavyball)",
            "psgd",
            psgd,
            {"lr": 1e-3, "weight_decay": 1e-2, "precond_lr": 0.1},
            {"lr": ("log", 1e-4, 3e-3), **lr_wd, "precond_lr": ("log", 0.03, 0.3)},
            "precond_lr",
            notes="heavyball.PSGDKron, torch.compile off",
            requires="heavyball",
        )
    )
    return {s.key: s for s in specs}


def unavailable(spec: OptSpec) -> str | None:
    """Why ``spec`` cannot run here (None: it can)."""
    if spec.requires:
        try:
            __import__(spec.requires)
        except ImportError:
            return f"{spec.requires} is not installed (pip install {spec.requires})"
    return None


def sample_hparams(space: dict[str, tuple[Any, ...]], rng: np.random.Generator) -> dict[str, Any]:
    """One random draw: log-uniform for ``("log", lo, hi)``, uniform over a choice."""
    hp: dict[str, Any] = {}
    for name, spec in space.items():
        if spec[0] == "log":
            lo, hi = math.log(spec[1]), math.log(spec[2])
            hp[name] = float(f"{math.exp(rng.uniform(lo, hi)):.3g}")
        elif spec[0] == "choice":
            hp[name] = spec[1][int(rng.integers(len(spec[1])))]
        else:
            raise ValueError(f"bad search space entry {name}: {spec!r}")
    return hp


# --------------------------------------------------------------------------- memory


def _proc_status_kib(field_name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def _release_memory() -> None:
    gc.collect(1)  # a full collection takes ~0.3 s with torch loaded; runs make no old cycles
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Peak RSS above the start RSS over a ``with`` block (VmHWM reset via clear_refs)."""

    method = "none"

    def __enter__(self) -> PeakRSS:
        _release_memory()
        self.start = _proc_status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM (reset per run)"
        except OSError:
            import resource

            self.method = "ru_maxrss (process-lifetime peak)"
            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method.startswith("VmHWM"):
            peak = _proc_status_kib("VmHWM")
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.bytes = (
            None if peak is None or self.start is None else max(0, peak - self.start) * 1024
        )


# --------------------------------------------------------------------------- training


@dataclass
class Split:
    """Tensors of one experiment: training split, validation split and test set."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    x_test: Any
    y_test: Any
    image_shape: tuple[int, int, int]
    n_classes: int
    info: dict[str, Any] = field(default_factory=dict)


def make_split(
    ds: Any,
    *,
    val_size: int | float = 5000,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> Split:
    """Torch tensors of ``ds`` with a deterministic validation split (``seed``)."""
    import torch

    from .data import train_val_split

    n = len(ds.y_train)
    if isinstance(val_size, int) and val_size >= n:
        val_size = 0.2
    tr, va = train_val_split(n, val_size, seed)
    if train_subset:
        tr = tr[:train_subset]
        va = va[: max(1, min(len(va), train_subset // 4))]
    te = np.arange(len(ds.y_test))[:test_subset] if test_subset else np.arange(len(ds.y_test))

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a))

    info = {
        **ds.describe(),
        "n_train_split": len(tr),
        "n_val": len(va),
        "n_test_used": len(te),
        "val_seed": seed,
    }
    return Split(
        t(ds.x_train[tr]),
        t(ds.y_train[tr]),
        t(ds.x_train[va]),
        t(ds.y_train[va]),
        t(ds.x_test[te]),
        t(ds.y_test[te]),
        ds.image_shape,
        ds.n_classes,
        info,
    )


def evaluate(model: Any, x: Any, y: Any, batch: int = 2000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``(x, y)``."""
    import torch

    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = model(x[i : i + batch])
            loss += float(torch.nn.functional.cross_entropy(out, y[i : i + batch], reduction="sum"))
            correct += int((out.argmax(1) == y[i : i + batch]).sum())
    return loss / len(y), correct / len(y)


def train_run(
    model_name: str,
    split: Split,
    spec: OptSpec,
    hp: dict[str, Any],
    *,
    steps: int,
    batch: int,
    seed: int,
    eval_every: int,
    eval_set: str = "test",
    progress: Any = None,
) -> dict[str, Any]:
    """Train one model with one optimizer; returns its curve, timings and memory.

    ``eval_set``: ``"test"`` (curve on the test set, validation at the end) or ``"val"``
    (tuning: validation only)."""
    import torch

    from .optim import state_bytes

    torch.manual_seed(seed)
    model = build_model(model_name, split.image_shape, split.n_classes)
    rng = np.random.default_rng(seed)
    n = len(split.y_train)
    x_eval, y_eval = (
        (split.x_test, split.y_test) if eval_set == "test" else (split.x_val, split.y_val)
    )
    curve: dict[str, list[float]] = {"step": [], "wall_s": [], "loss": [], "acc": []}
    train_loss: list[float] = []
    fb: list[float] = []
    st: list[float] = []
    wall, sbytes, diverged = 0.0, 0, False
    perm, pos = rng.permutation(n), 0

    def record(net: Any, step: int) -> None:
        loss, acc = evaluate(net, x_eval, y_eval)
        curve["step"].append(step)
        curve["wall_s"].append(wall)
        curve["loss"].append(loss)
        curve["acc"].append(acc)

    with PeakRSS() as mem:
        opt = spec.build(model, hp)
        record(model, 0)
        for k in range(1, steps + 1):
            if pos + batch > n:
                perm, pos = rng.permutation(n), 0
            idx = torch.from_numpy(perm[pos : pos + batch])
            pos += batch
            xb, yb = split.x_train[idx], split.y_train[idx]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            t1 = time.perf_counter()
            if not torch.isfinite(loss):
                diverged = True
                break
            try:
                opt.step()
            except (ValueError, RuntimeError) as e:  # e.g. non-finite gradients
                diverged = True
                train_loss.append(float("nan"))
                curve.setdefault("error", []).append(str(e)[:200])  # type: ignore[arg-type]
                break
            t2 = time.perf_counter()
            fb.append(t1 - t0)
            st.append(t2 - t1)
            wall += t2 - t0
            train_loss.append(loss.item())
            if progress is not None:
                progress.update(1)
            if k % eval_every == 0 or k == steps:
                record(model, k)
                if not math.isfinite(curve["loss"][-1]):
                    diverged = True
                    break
        sbytes = state_bytes(opt)
    if progress is not None and len(fb) < steps:
        progress.update(steps - len(fb))
    out: dict[str, Any] = {
        "model": model_name,
        "optimizer": spec.key,
        "seed": seed,
        "hparams": dict(hp),
        "steps_done": len(fb),
        "diverged": diverged,
        "eval_set": eval_set,
        "curve": curve,
        "train_loss": train_loss,
        "fb_s_median": statistics.median(fb) if fb else None,
        "step_s_median": statistics.median(st) if st else None,
        "step_s_mean": statistics.fmean(st) if st else None,
        "fb_s_steady": _steady_mean(fb),
        "step_s_steady": _steady_mean(st),
        "wall_s": wall,
        "state_bytes": sbytes,
        "peak_rss_bytes": mem.bytes,
        "memory_method": mem.method,
        "n_params": sum(p.numel() for p in model.parameters()),
        "final_loss": curve["loss"][-1] if not diverged else float("nan"),
        "final_acc": curve["acc"][-1] if not diverged else float("nan"),
    }
    if eval_set == "test" and not diverged:
        out["val_loss"], out["val_acc"] = evaluate(model, split.x_val, split.y_val)
    del model, opt
    _release_memory()
    return out


#: Optimizers not tuned on their own but given their twin's tuned values: the same update,
#: only the Newton–Schulz precision differs (bf16 NS is ~100× slower on a CPU).
REUSE_TUNING = {"muon_bf16": "muon_fp32"}

#: Steps left out of the per-step time means (warm-up refreshes at every step, lazy init).
STEADY_SKIP = 20


def _steady_mean(xs: Sequence[float]) -> float | None:
    """Mean of the per-step times after the first :data:`STEADY_SKIP` (all when fewer). A mean,
    not a median: with a refresh every ``T`` steps the median hides the refresh cost."""
    if not xs:
        return None
    tail = xs[STEADY_SKIP:] if len(xs) > 2 * STEADY_SKIP else xs
    return statistics.fmean(tail)


def tune(
    model_name: str,
    split: Split,
    spec: OptSpec,
    *,
    budget: int,
    steps: int,
    batch: int,
    eval_every: int,
    seed: int = 0,
    progress: Any = None,
) -> dict[str, Any]:
    """Random search: trial 0 the defaults, then ``budget − 1`` draws; best validation loss."""
    rng = np.random.default_rng([seed, sum(map(ord, spec.key))])
    trials = []
    for i in range(budget):
        hp = dict(spec.defaults) if i == 0 else sample_hparams(spec.space, rng)
        r = train_run(
            model_name,
            split,
            spec,
            hp,
            steps=steps,
            batch=batch,
            seed=seed,
            eval_every=max(eval_every, steps),
            eval_set="val",
            progress=progress,
        )
        score = r["final_loss"] if math.isfinite(r["final_loss"]) else math.inf
        trials.append(
            {"hparams": hp, "val_loss": score, "val_acc": r["final_acc"], "diverged": r["diverged"]}
        )
    best = min(trials, key=lambda t: t["val_loss"])
    return {"trials": trials, "best": best["hparams"], "best_val_loss": best["val_loss"]}


# --------------------------------------------------------------------------- summaries


#: Refresh intervals of the step-time sweep (issue: report T = 1, 2, 10).
SWEEP_INTERVALS = (1, 2, 10)
SWEEP_KEYS = ("spectral_p2_quad", "spectral_p2_exact", "spectral_p2_quad_paper")


def step_time_sweep(
    model_name: str,
    split: Split,
    registry: dict[str, OptSpec],
    hps: dict[str, dict[str, Any]],
    *,
    keys: Sequence[str] = SWEEP_KEYS,
    intervals: Sequence[int] = SWEEP_INTERVALS,
    batch: int = 128,
    steps: int = 60,
    repeats: int = 3,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Whole-step time (zero_grad + forward + backward + ``opt.step()``) of SpectralKron at
    each refresh interval ``T``, as a ratio to AdamW's measured in the same loop.

    Each configuration trains ``STEADY_SKIP + steps`` steps from seed 0 with its tuned
    hyperparameters; the per-step means leave the first ``STEADY_SKIP`` out. The
    configurations run round-robin, ``repeats`` times, and the median over repeats is kept,
    so a burst of load from elsewhere is spread over all of them."""
    configs: list[tuple[str, int | None]] = [("adamw", None)]
    configs += [(k, t) for k in keys if k in hps for t in intervals]
    times: dict[tuple[str, int | None], list[tuple[float, float]]] = {c: [] for c in configs}
    for _ in range(repeats):
        for k, t in configs:
            hp = dict(hps[k]) if t is None else {**hps[k], "update_interval": t}
            r = train_run(
                model_name,
                split,
                registry[k],
                hp,
                steps=STEADY_SKIP + steps,
                batch=batch,
                seed=0,
                eval_every=10**9,
                eval_set="val",
            )
            if r["step_s_steady"] is not None and not r["diverged"]:
                times[(k, t)].append((r["fb_s_steady"], r["step_s_steady"]))
            if progress is not None:
                progress.update(STEADY_SKIP + steps)
    rows = []
    ref = times[("adamw", None)]
    ref_whole = statistics.median([a + b for a, b in ref]) if ref else None
    ref_step = statistics.median([b for _, b in ref]) if ref else None
    for (k, t), ts in times.items():
        if not ts:
            rows.append({"key": k, "label": registry[k].label, "T": t, "whole_ms": None})
            continue
        whole = statistics.median([a + b for a, b in ts])
        step = statistics.median([b for _, b in ts])
        rows.append(
            {
                "key": k,
                "label": registry[k].label,
                "T": t,
                "fb_ms": 1e3 * statistics.median([a for a, _ in ts]),
                "step_ms": 1e3 * step,
                "whole_ms": 1e3 * whole,
                "whole_ratio": whole / ref_whole if ref_whole else None,
                "step_ratio": step / ref_step if ref_step else None,
            }
        )
    return rows


def sweep_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Header + rows of the step-time sweep."""
    out = [
        [
            "optimizer",
            "T",
            "fwd+bwd ms",
            "opt.step ms",
            "whole ms",
            "whole × AdamW",
            "opt.step × AdamW",
        ]
    ]
    for r in rows:
        out.append(
            [
                r["label"],
                "—" if r["T"] is None else str(r["T"]),
                _f(r.get("fb_ms"), ".1f"),
                _f(r.get("step_ms"), ".2f"),
                _f(r.get("whole_ms"), ".1f"),
                _f(r.get("whole_ratio"), ".2f"),
                _f(r.get("step_ratio"), ".1f"),
            ]
        )
    return out


def _mean_sd(xs: Sequence[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def reach(curve: dict[str, list[float]], target: float) -> tuple[int | None, float | None]:
    """(step, wall-clock s) of the first evaluation with loss ≤ ``target``."""
    for s, w, loss in zip(curve["step"], curve["wall_s"], curve["loss"]):
        if loss <= target:
            return int(s), float(w)
    return None, None


def summarize(
    runs: list[dict[str, Any]], keys: Sequence[str], labels: dict[str, str], target: float | None
) -> tuple[list[dict[str, Any]], float | None]:
    """One row per optimizer (mean ± sd over seeds) and the target loss used.

    ``target`` None: 1.1 × AdamW's mean final test loss (else the smallest mean)."""
    by: dict[str, list[dict[str, Any]]] = {
        k: [r for r in runs if r["optimizer"] == k] for k in keys
    }
    if target is None:
        base = _mean_sd([r["final_loss"] for r in by.get("adamw", [])])[0]
        if base is None:
            finals = [
                m for k in keys if (m := _mean_sd([r["final_loss"] for r in by[k]])[0]) is not None
            ]
            base = min(finals) if finals else None
        target = None if base is None else 1.1 * base
    ref = [r for r in by.get("adamw") or [] if r["step_s_steady"]]
    ref_step = statistics.median([r["step_s_steady"] for r in ref]) if ref else None
    ref_whole = (
        statistics.median([r["step_s_steady"] + r["fb_s_steady"] for r in ref]) if ref else None
    )
    rows = []
    for k in keys:
        rs = by[k]
        if not rs:
            continue
        loss, loss_sd = _mean_sd([r["final_loss"] for r in rs])
        acc, acc_sd = _mean_sd([r["final_acc"] for r in rs])
        hits = [reach(r["curve"], target) for r in rs] if target is not None else []
        steps_t = [h[0] for h in hits if h[0] is not None]
        wall_t = [h[1] for h in hits if h[1] is not None]
        st_ = [r["step_s_steady"] for r in rs if r["step_s_steady"]]
        whole = [r["step_s_steady"] + r["fb_s_steady"] for r in rs if r["step_s_steady"]]
        step_s = statistics.median(st_) if st_ else None
        rows.append(
            {
                "key": k,
                "label": labels.get(k, k),
                "seeds": len(rs),
                "diverged": sum(r["diverged"] for r in rs),
                "test_loss": loss,
                "test_loss_sd": loss_sd,
                "test_acc": acc,
                "test_acc_sd": acc_sd,
                "reached": len(steps_t),
                "steps_to_target": statistics.fmean(steps_t) if steps_t else None,
                "wall_to_target_s": statistics.fmean(wall_t) if wall_t else None,
                "step_ms": None if step_s is None else 1e3 * step_s,
                "step_ratio": step_s / ref_step if step_s and ref_step else None,
                "whole_ms": 1e3 * statistics.median(whole) if whole else None,
                "whole_ratio": (
                    statistics.median(whole) / ref_whole if whole and ref_whole else None
                ),
                "state_mib": max(r["state_bytes"] for r in rs) / 2**20,
                "peak_rss_mib": (
                    max(r["peak_rss_bytes"] for r in rs) / 2**20
                    if all(r["peak_rss_bytes"] is not None for r in rs)
                    else None
                ),
                "hparams": rs[0]["hparams"],
            }
        )
    return rows, target


def _f(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


TABLE_HEADERS = [
    "optimizer",
    "test acc %",
    "test loss",
    "steps→target",
    "s→target",
    "opt.step ms",
    "opt.step × AdamW",
    "whole step × AdamW",
    "state MiB",
    "peak RSS MiB",
]


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        acc = (
            "diverged"
            if r["test_acc"] is None
            else f"{100 * r['test_acc']:.2f} ± {100 * r['test_acc_sd']:.2f}"
        )
        loss = "—" if r["test_loss"] is None else f"{r['test_loss']:.4f} ± {r['test_loss_sd']:.4f}"
        reached = f" ({r['reached']}/{r['seeds']})" if r["reached"] < r["seeds"] else ""
        steps = (
            "not reached"
            if r["steps_to_target"] is None
            else f"{r['steps_to_target']:.0f}{reached}"
        )
        out.append(
            [
                r["label"],
                acc,
                loss,
                steps,
                _f(r["wall_to_target_s"], ".2f"),
                _f(r["step_ms"], ".2f"),
                _f(r["step_ratio"], ".2f"),
                _f(r["whole_ratio"], ".2f"),
                f"{r['state_mib']:.2f}",
                _f(r["peak_rss_mib"], ".1f"),
            ]
        )
    return out


def text_table(cells: list[list[str]]) -> str:
    """``cells`` (header first) as aligned plain-text columns."""
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(cells: list[list[str]]) -> list[str]:
    """``cells`` (header first) as a markdown table, numbers right-aligned."""
    lines = ["| " + " | ".join(cells[0]) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(cells[0]) - 1)) + "|")
    return lines + ["| " + " | ".join(r) + " |" for r in cells[1:]]


# --------------------------------------------------------------------------- plots


def plot_model(
    runs: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str,
    target: float | None,
) -> None:
    """2×3 panels: test loss / accuracy vs step and vs wall-clock (mean ± sd over seeds),
    opt.step() time and memory per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(16, 8.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(rows):
        rs = [x for x in runs if x["optimizer"] == r["key"] and not x["diverged"]]
        if not rs:
            continue
        n = min(len(x["curve"]["step"]) for x in rs)
        steps = np.array(rs[0]["curve"]["step"][:n])
        wall = np.mean([x["curve"]["wall_s"][:n] for x in rs], axis=0)
        color = colors[i % len(colors)]
        for row, metric, scale in ((0, "loss", 1.0), (1, "acc", 100.0)):
            vals = scale * np.array([x["curve"][metric][:n] for x in rs])
            m, s = vals.mean(0), vals.std(0)
            for col, xs in ((0, steps), (1, wall)):
                ax[row, col].plot(xs, m, color=color, label=r["label"])
                ax[row, col].fill_between(xs, m - s, m + s, color=color, alpha=0.2, lw=0)
    for col, xlabel in ((0, "training step"), (1, "training wall-clock (s, evaluation excluded)")):
        ax[0, col].set_yscale("log")
        ax[0, col].set_ylabel("test cross-entropy (nats, log scale)")
        ax[1, col].set_ylabel("test accuracy (%)")
        if target is not None:
            ax[0, col].axhline(target, color="k", ls=":", lw=1, label=f"target {target:.3f}")
        for row in (0, 1):
            ax[row, col].set_xlabel(xlabel)
            ax[row, col].grid(alpha=0.3)
        lo = [
            float(np.percentile(x["curve"]["acc"], 10)) * 100
            for x in runs
            if not x["diverged"] and x["curve"]["acc"]
        ]
        if lo:
            ax[1, col].set_ylim(bottom=max(0.0, min(lo)))
        starts = [x["curve"]["loss"][0] for x in runs if x["curve"]["loss"]]
        if starts:  # a run that blows up would squash every other curve: it goes off scale
            ax[0, col].set_ylim(top=2 * max(starts))
    ax[0, 0].legend(fontsize=8)
    labels = [r["label"] for r in rows]
    y = np.arange(len(rows))
    ax[0, 2].barh(y, [r["step_ms"] or 0 for r in rows], color=colors[: len(rows)])
    ax[0, 2].set_xscale("log")
    ax[0, 2].set_xlabel("opt.step() time (ms, mean per step, log scale)")
    for r, yy in zip(rows, y):
        if r["step_ratio"]:
            ax[0, 2].text(
                r["step_ms"], yy, f" {r['step_ratio']:.1f}× AdamW", va="center", fontsize=8
            )
    ax[1, 2].barh(y - 0.2, [r["state_mib"] for r in rows], height=0.4, label="optimizer state")
    ax[1, 2].barh(
        y + 0.2,
        [r["peak_rss_mib"] or 0 for r in rows],
        height=0.4,
        label="peak RSS above start of run",
    )
    ax[1, 2].set_xscale("log")  # optimizer state is ~100× smaller than the process's RSS
    ax[1, 2].set_xlabel("memory (MiB, log scale)")
    ax[1, 2].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    for a in (ax[0, 2], ax[1, 2]):
        a.set_yticks(y, labels, fontsize=8)
        a.invert_yaxis()
        a.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- running


def _progress_bar(total: int, quiet: bool) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(
        total=total,
        disable=quiet,
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.05,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )


def run_benchmark(
    *,
    models: Sequence[str],
    optimizers: Sequence[str],
    dataset: str = "auto",
    data_root: str | None = None,
    seeds: int = 3,
    steps: int = 1000,
    batch: int = 128,
    eval_every: int = 50,
    tune_budget: int = 8,
    tune_steps: int | None = None,
    val_size: int | float = 5000,
    train_subset: int | None = None,
    test_subset: int | None = None,
    target_loss: float | None = None,
    fixed_hparams: dict[str, dict[str, Any]] | None = None,
    sweep_steps: int = 0,
    sweep_repeats: int = 3,
    on_model: Callable[[dict[str, Any]], None] | None = None,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Tune (unless ``fixed_hparams``) and train every (model, optimizer); returns the JSON.

    ``sweep_steps`` > 0 adds :func:`step_time_sweep` per model (SpectralKron at T = 1, 2, 10
    against AdamW, ``sweep_repeats`` rounds of that many timed steps). ``on_model`` gets the
    JSON so far after each model (the CLI saves it, so a later failure loses nothing)."""
    import torch

    from .data import load_dataset
    from .optim import machine_info

    log = log or (lambda msg: None)
    t_start = time.perf_counter()
    ds = load_dataset(dataset, data_root)
    for note in ds.notes:
        log("note: " + note)
    split = make_split(ds, val_size=val_size, train_subset=train_subset, test_subset=test_subset)
    registry = optimizer_registry()
    unknown = [k for k in optimizers if k not in registry]
    if unknown:
        raise ValueError(f"unknown optimizer(s) {unknown} (known: {', '.join(registry)})")
    skipped = {k: why for k in optimizers if (why := unavailable(registry[k]))}
    keys = [k for k in optimizers if k not in skipped]
    for k, why in skipped.items():
        log(f"skipping {k}: {why}")
    tune_steps = tune_steps or steps
    do_tune = fixed_hparams is None and tune_budget > 0
    n_tuned = len([k for k in keys if REUSE_TUNING.get(k) not in keys])
    total = len(models) * (
        len(keys) * seeds * steps + (n_tuned * tune_budget * tune_steps if do_tune else 0)
    )
    sweep_keys = [k for k in SWEEP_KEYS if k in keys] if "adamw" in keys and sweep_steps else []
    n_sweep = (1 + len(sweep_keys) * len(SWEEP_INTERVALS)) * sweep_repeats if sweep_keys else 0
    total += len(models) * n_sweep * (STEADY_SKIP + sweep_steps)
    bar = _progress_bar(total, quiet)
    results: dict[str, Any] = {}

    def snapshot() -> dict[str, Any]:
        return {
            "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {**machine_info("cpu"), "loadavg_end": _loadavg()},
            "dataset": split.info,
            "config": {
                "models": [m for m in models if m in results],
                "optimizers": keys,
                "skipped": skipped,
                "seeds": seeds,
                "steps": steps,
                "batch": batch,
                "eval_every": eval_every,
                "tune_budget": tune_budget if do_tune else 0,
                "tune_steps": tune_steps if do_tune else 0,
                "val_size": val_size,
                "train_subset": train_subset,
                "test_subset": test_subset,
                "target_loss": target_loss,
                "sweep_steps": sweep_steps if sweep_keys else 0,
                "sweep_repeats": sweep_repeats if sweep_keys else 0,
                "dtype": "float32",
                "device": "cpu",
                "torch_threads": torch.get_num_threads(),
            },
            "optimizers": {
                k: {
                    "label": registry[k].label,
                    "notes": registry[k].notes,
                    "knob": registry[k].knob,
                    "space": registry[k].space,
                    "defaults": registry[k].defaults,
                }
                for k in keys
            },
            "results": results,
            "wall_s": time.perf_counter() - t_start,
        }

    try:
        for m in models:
            # untimed warm-up (lazy torch initialisation, allocator): not in any result
            train_run(
                m,
                split,
                registry[keys[0]],
                registry[keys[0]].defaults,
                steps=3,
                batch=batch,
                seed=0,
                eval_every=3,
                eval_set="val",
            )
            runs, tuning, hps = [], {}, {}
            for k in keys:
                spec = registry[k]
                if do_tune and REUSE_TUNING.get(k) in keys:
                    continue  # takes its twin's tuned values below
                if do_tune:
                    if bar is not None:
                        bar.set_description(f"{m}/{k} tune")
                    tuning[k] = tune(
                        m,
                        split,
                        spec,
                        budget=tune_budget,
                        steps=tune_steps,
                        batch=batch,
                        eval_every=eval_every,
                        progress=bar,
                    )
                    hps[k] = tuning[k]["best"]
                else:
                    hps[k] = dict((fixed_hparams or {}).get(k) or spec.defaults)
            for k, twin in REUSE_TUNING.items():
                if do_tune and k in keys and twin in keys:
                    hps[k] = dict(hps[twin])
                    tuning[k] = {"reused": twin, "best": hps[k], "trials": []}
            # seeds outer, optimizers inner: a burst of load from elsewhere on a shared
            # machine is spread over all optimizers instead of hitting one
            for s in range(seeds):
                for k in keys:
                    if bar is not None:
                        bar.set_description(f"{m}/{k} seed {s}")
                    runs.append(
                        train_run(
                            m,
                            split,
                            registry[k],
                            hps[k],
                            steps=steps,
                            batch=batch,
                            seed=s,
                            eval_every=eval_every,
                            progress=bar,
                        )
                    )
            labels = {k: registry[k].label for k in keys}
            rows, target = summarize(runs, keys, labels, target_loss)
            sweep = None
            if sweep_keys:
                if bar is not None:
                    bar.set_description(f"{m} step-time sweep")
                sweep = step_time_sweep(
                    m,
                    split,
                    registry,
                    hps,
                    keys=sweep_keys,
                    batch=batch,
                    steps=sweep_steps,
                    repeats=sweep_repeats,
                    progress=bar,
                )
            results[m] = {
                "rows": rows,
                "target_loss": target,
                "runs": runs,
                "tuning": tuning or None,
                "sweep": sweep,
            }
            if on_model is not None:
                on_model(snapshot())
    finally:
        if bar is not None:
            bar.close()
    return snapshot()


def _loadavg() -> list[float] | None:
    with contextlib.suppress(AttributeError, OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


# --------------------------------------------------------------------------- writers


def markers(section: str) -> tuple[str, str]:
    return (
        f"<!-- train-{section}:begin (written by `spectral-curv "
        f"{'demo' if section == 'demo' else 'bench train'}`) -->",
        f"<!-- train-{section}:end -->",
    )


def write_markdown(path: str | os.PathLike[str], section: str, name: str) -> None:
    """Replace the ``name`` section of ``path`` between its markers, or append it."""
    begin, end = markers(name)
    header = (
        "# Training benchmark\n\nGenerated by `spectral-curv demo` (small, fixed "
        "hyperparameters) and `spectral-curv bench train` (tuned); see "
        "`spectral_curv.bench.train` for the protocol.\n"
    )
    replace_section(path, section, begin, end, header)


def write_json(path: str | os.PathLike[str], name: str, data: dict[str, Any]) -> None:
    """Store ``data`` under key ``name`` of the JSON file (other keys are kept)."""
    p = Path(path)
    whole: dict[str, Any] = {}
    if p.exists():
        with contextlib.suppress(ValueError):
            whole = json.loads(p.read_text())
    whole[name] = data
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(whole, indent=1, default=str) + "\n")


PRECOND_METHODS = ("spectral_quadratic", "spectral_exact", "eigh_refresh", "muon_ns5")


def precond_lines(path: str | os.PathLike[str]) -> list[str]:
    """The preconditioner-cost table (matmul-equivalents at the two largest sizes) from the
    JSON that ``python -m spectral_curv.bench precond`` writes; [] when it is missing."""
    p = Path(path)
    if not p.exists():
        return []
    d = json.loads(p.read_text())
    res = [r for r in d.get("results", []) if r.get("method") in PRECOND_METHODS]
    sizes = sorted({r["n"] for r in res})[-2:]
    backends = [b for b in d["config"]["backends"] if any(r["backend"] == b for r in res)]
    if not res or not sizes:
        return []
    cols = [(b, n) for b in backends for n in sizes]
    lines = [
        "### Preconditioner cost",
        "",
        f"One refresh + preconditioned step of an n×n layer in matmul-equivalents (time ÷ one "
        f"n×n×n fp32 matmul in the same run; `python -m spectral_curv.bench precond`, "
        f"{d['config'].get('date', '')}; every size and method in "
        f"[benchmarks.md](benchmarks.md)):",
        "",
        "| method | " + " | ".join(f"{b} n={n}" for b, n in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for m in PRECOND_METHODS:
        got = {(r["backend"], r["n"]): r for r in res if r["method"] == m}
        if not got:
            continue
        label = next(iter(got.values()))["label"]
        cells = [f"{got[c]['ratio']:.1f}" if c in got else "—" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def markdown_section(
    data: dict[str, Any],
    name: str,
    plots: dict[str, str],
    json_rel: str | None,
    command: str,
    extra: Sequence[str] = (),
) -> str:
    """The generated markdown of one run (``name``: ``demo`` or ``bench``)."""
    c, m, d = data["config"], data["machine"], data["dataset"]
    begin, end = markers(name)
    title = "Demo: fixed hyperparameters" if name == "demo" else "Benchmark: tuned"
    lines = [begin, f"## {title} ({d['name']}, CPU, fp32)", "", f"Command: `{command}`", ""]
    lines.append(
        f"Data: {d['name']} from {d['source']}; {d['n_train_split']} training images "
        f"(validation split of {d['n_val']}, seed {d['val_seed']}), {d['n_test_used']} test "
        f"images. {c['steps']} steps of batch {c['batch']} per run, test set evaluated every "
        f"{c['eval_every']} steps, {c['seeds']} seeds (model init and batch order)."
    )
    for note in d.get("notes") or []:
        lines += ["", f"**Note:** {note}."]
    lines.append("")
    if c["tune_budget"]:
        lines.append(
            f"Tuning: {c['tune_budget']} trials per optimizer (trial 0 = defaults, then a "
            f"seeded random search over lr, weight decay and the optimizer's knob), "
            f"{c['tune_steps']} steps each, best validation loss kept."
            + "".join(
                f" {k} is not tuned on its own: it uses {twin}'s values (same update, only "
                "the Newton–Schulz precision differs)."
                for k, twin in REUSE_TUNING.items()
                if k in c["optimizers"] and twin in c["optimizers"]
            )
        )
    else:
        lines.append(f"Hyperparameters: fixed, from {data.get('hparams_source', 'defaults')}.")
    lines.append("")
    lines.append(
        "**Machine.** "
        + "; ".join(
            [
                m["cpu"],
                f"{m['cpus_usable']} usable cores",
                f"torch {m['torch']} ({m['torch_threads']} threads)",
                f"load average at end {m.get('loadavg_end')}",
                f"total wall-clock {data['wall_s']:.0f} s",
            ]
        )
        + "."
    )
    for model, res in data["results"].items():
        lines += ["", f"### {model}", ""]
        if res["target_loss"] is not None:
            lines.append(
                f"Target test loss {res['target_loss']:.4f} "
                f"({'given' if c['target_loss'] else '1.1 × AdamW final'}); "
                "steps/seconds to target are means over the seeds that reach it "
                "(count shown when not all do)."
            )
            lines.append("")
        lines += md_table([TABLE_HEADERS, *table_rows(res["rows"])])
        lines.append("")
        lines.append(
            "Hyperparameters used: "
            + "; ".join(
                f"{r['label']}: "
                + ", ".join(
                    f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in r["hparams"].items()
                )
                for r in res["rows"]
            )
            + "."
        )
        if model in plots:
            lines += ["", f"![{model} curves]({plots[model]})"]
        if res.get("sweep"):
            lines += [
                "",
                f"Step time vs refresh interval T ({model}; tuned hyperparameters, "
                f"{c['sweep_repeats']} round-robin rounds of {c['sweep_steps']} timed steps "
                f"after {STEADY_SKIP} untimed, median of the per-round means):",
                "",
            ]
            lines += md_table(sweep_table(res["sweep"]))
    if extra:
        lines += ["", *extra]
    lines += ["", "Notes:", ""]
    lines.append(
        f"- opt.step ms: mean `opt.step()` time per step (the first {STEADY_SKIP} steps "
        "left out; a mean, so a refresh every T steps is counted at 1/T); whole step = "
        "zero_grad + forward + backward + `opt.step()`; × AdamW divides by AdamW's in the same "
        "run (median over seeds). Wall-clock counts forward + backward + step (evaluation "
        "excluded)."
    )
    method = next(
        (r["memory_method"] for res in data["results"].values() for r in res["runs"]), "n/a"
    )
    lines.append(
        f"- Memory: optimizer state = bytes of every tensor in `opt.state`; peak RSS "
        f"= peak resident set during the run above the RSS at its start, measured "
        f"with {method}."
    )
    if "muon_bf16" in c["optimizers"]:
        lines.append(
            "- `Muon bf16-NS` is `torch.optim.Muon` as shipped (Newton–Schulz in "
            "bfloat16, slow on CPUs); `Muon fp32-NS` is the same update with fp32 "
            "Newton–Schulz."
        )
    for k, why in (c.get("skipped") or {}).items():
        lines.append(f"- {k} skipped: {why}.")
    for o in data["optimizers"].values():
        lines.append(f"- {o['label']}: {o['notes']}.")
    if json_rel:
        lines.append(f"- Every curve: [{json_rel}]({json_rel}) (key `{name}`).")
    lines += ["", end, ""]
    return "\n".join(lines)


def _write_outputs(data: dict[str, Any], name: str, args: argparse.Namespace, command: str) -> None:
    out = None if args.no_write else args.out
    base = Path(out).resolve().parent if out else Path.cwd()
    plots: dict[str, str] = {}
    if not args.no_write and args.plot_dir:
        for model, res in data["results"].items():
            path = Path(args.plot_dir) / (
                f"train_demo_{model}.png"
                if name == "demo"
                else f"train_{data['dataset']['name']}_{model}.png"
            )
            try:
                plot_model(
                    res["runs"],
                    res["rows"],
                    path,
                    target=res["target_loss"],
                    title=f"{name}: {model} on {data['dataset']['name']}, CPU fp32, "
                    f"mean ± sd over {data['config']['seeds']} seeds",
                )
            except ImportError as e:
                print(f"no plot ({e}); pip install matplotlib", file=sys.stderr)
                break
            plots[model] = os.path.relpath(path.resolve(), base)
            print(f"wrote {path}", file=sys.stderr)
    if not args.no_write and args.json:
        write_json(args.json, name, data)
        print(f"wrote {args.json} (key {name!r})", file=sys.stderr)
    if out:
        json_path = args.json or getattr(args, "from_json", None)
        json_rel = os.path.relpath(Path(json_path).resolve(), base) if json_path else None
        extra = precond_lines(Path(out).parent / PRECOND_JSON) if name == "bench" else []
        write_markdown(out, markdown_section(data, name, plots, json_rel, command, extra), name)
        print(f"wrote {out}", file=sys.stderr)


def _print_tables(data: dict[str, Any]) -> None:
    for note in data["dataset"].get("notes") or []:
        print(f"NOTE: {note}")
    d = data["dataset"]
    print(
        f"dataset: {d['name']} ({d['n_train_split']} train / {d['n_val']} val / "
        f"{d['n_test_used']} test); {data['config']['seeds']} seeds; "
        f"{data['config']['steps']} steps of {data['config']['batch']}; "
        f"wall {data['wall_s']:.1f} s"
    )
    for model, res in data["results"].items():
        t = res["target_loss"]
        print(f"\n{model}: target test loss {'—' if t is None else f'{t:.4f}'}")
        print(text_table([TABLE_HEADERS, *table_rows(res["rows"])]))
        if res.get("sweep"):
            print(f"\n{model}: step time vs refresh interval T")
            print(text_table(sweep_table(res["sweep"])))


# --------------------------------------------------------------------------- CLI


def _common_arguments(p: argparse.ArgumentParser, *, out: str | None) -> None:
    p.add_argument(
        "--dataset",
        choices=("auto", "fashion-mnist", "digits"),
        default="auto",
        help="auto: Fashion-MNIST when installed (apt install "
        "dataset-fashion-mnist), else scikit-learn's digits (default auto)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="directory of the Fashion-MNIST *-ubyte.gz files "
        "(default /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--out",
        default=out,
        metavar="MD",
        help=f"markdown file whose section is (re)written (default {out})",
    )
    p.add_argument(
        "--json",
        default=JSON_PATH,
        metavar="PATH",
        help=f"JSON of every curve, updated under this run's key (default {JSON_PATH})",
    )
    p.add_argument(
        "--plot-dir",
        default="docs/img",
        metavar="DIR",
        help="where the train_*.png plots go (default docs/img)",
    )
    p.add_argument("--no-write", action="store_true", help="print only: write no file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``bench train``."""
    p.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        help="models (default: mlp cnn vit)",
    )
    p.add_argument(
        "--optimizers",
        nargs="+",
        choices=ALL_OPTIMIZERS,
        default=list(DEFAULT_BENCH_OPTIMIZERS),
        metavar="KEY",
        help="optimizers (default: all: " + " ".join(ALL_OPTIMIZERS) + ")",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per final run (default 3)")
    p.add_argument("--steps", type=int, default=2000, help="steps per final run (default 2000)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument(
        "--eval-every",
        type=int,
        default=100,
        help="test evaluation interval in steps (default 100)",
    )
    p.add_argument(
        "--tune-budget",
        type=int,
        default=8,
        help="random-search trials per (model, optimizer), same for all; 0: use "
        "the registry defaults (default 8)",
    )
    p.add_argument(
        "--tune-steps", type=int, default=None, help="steps per tuning trial (default: --steps)"
    )
    p.add_argument(
        "--val-size",
        type=int,
        default=5000,
        help="validation images split off the training set (default 5000)",
    )
    p.add_argument(
        "--train-subset",
        type=int,
        default=None,
        metavar="N",
        help="use only N training images (default: all)",
    )
    p.add_argument(
        "--test-subset",
        type=int,
        default=None,
        metavar="N",
        help="use only N test images (default: all)",
    )
    p.add_argument(
        "--target-loss",
        type=float,
        default=None,
        help="test loss for steps/seconds-to-target (default 1.1 × AdamW's final)",
    )
    p.add_argument(
        "--sweep-steps",
        type=int,
        default=60,
        help="timed steps per round of the step-time sweep (SpectralKron p=2 at T = 1, 2, 10 "
        "vs AdamW; 0: off; default 60)",
    )
    p.add_argument(
        "--sweep-repeats",
        type=int,
        default=3,
        help="round-robin rounds of the step-time sweep (default 3)",
    )
    p.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="do not run: re-print, re-plot and rewrite the report from the `bench` key of a "
        "JSON this command wrote",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: digits, mlp, 3 optimizers, 1 seed, 2 trials of 5 steps, "
        "a 1-round sweep of 3 steps; writes nothing unless --out/--json are given",
    )
    _common_arguments(p, out=None)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``spectral-curv demo``."""
    p.add_argument(
        "--steps", type=int, default=DEMO["steps"], help=f"steps per run (default {DEMO['steps']})"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=DEMO["seeds"],
        help=f"seeds (default {DEMO['seeds']}; 3 take ≈ 1.5× as long)",
    )
    p.add_argument(
        "--optimizers",
        nargs="+",
        choices=tuple(DEMO["hparams"]),
        default=list(DEMO["optimizers"]),
        metavar="KEY",
        help="optimizers (default: " + " ".join(DEMO["optimizers"]) + ")",
    )
    _common_arguments(p, out=MD_PATH)


def _apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _log(args: argparse.Namespace) -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    return log


def main(args: argparse.Namespace) -> int:
    """Entry point of ``spectral-curv bench train``."""
    from .data import ChecksumError, DatasetMissingError

    _apply_threads(args)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())["bench"]
        if args.out is None:
            args.out = MD_PATH
        args.json = None  # nothing new to store; the report links to --from-json
        _print_tables(data)
        _write_outputs(data, "bench", args, data.get("command", "spectral-curv bench train"))
        return 0
    if args.quick:
        args.dataset = "digits" if args.dataset == "auto" else args.dataset
        opts = (
            args.optimizers
            if args.optimizers != list(DEFAULT_BENCH_OPTIMIZERS)
            else ["adamw", "muon_fp32", "spectral_p2_quad"]
        )
        models = args.models if args.models != list(MODELS) else ["mlp"]
        kw = dict(
            models=models,
            optimizers=opts,
            seeds=1,
            steps=5,
            eval_every=5,
            tune_budget=min(args.tune_budget, 2),
            tune_steps=5,
            batch=32,
            sweep_steps=3,
            sweep_repeats=1,
        )
        if args.out is None and args.json == JSON_PATH:
            args.no_write = True
    else:
        kw = dict(
            models=args.models,
            optimizers=args.optimizers,
            seeds=args.seeds,
            steps=args.steps,
            eval_every=args.eval_every,
            tune_budget=args.tune_budget,
            tune_steps=args.tune_steps,
            batch=args.batch,
            sweep_steps=args.sweep_steps,
            sweep_repeats=args.sweep_repeats,
        )
        if args.out is None:
            args.out = MD_PATH

    def save_partial(d: dict[str, Any]) -> None:
        if not args.no_write and args.json:
            write_json(args.json, "bench", {**d, "partial": True})

    try:
        data = run_benchmark(
            dataset=args.dataset,
            data_root=args.data_root,
            val_size=args.val_size,
            train_subset=args.train_subset,
            test_subset=args.test_subset,
            target_loss=args.target_loss,
            on_model=save_partial,
            quiet=args.quiet,
            log=_log(args),
            **kw,
        )  # type: ignore[arg-type]
    except (DatasetMissingError, ChecksumError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print_tables(data)
    cmd = (
        "spectral-curv bench train " + " ".join(sys.argv[3:])
        if sys.argv[1:3] == ["bench", "train"]
        else "spectral-curv bench train (see config in the JSON)"
    )
    data["command"] = cmd.strip()
    _write_outputs(data, "bench", args, cmd.strip())
    return 0


def demo_main(args: argparse.Namespace) -> int:
    """Entry point of ``spectral-curv demo``: fixed hyperparameters, one MLP, a table."""
    from .data import ChecksumError, DatasetMissingError

    _apply_threads(args)
    t0 = time.perf_counter()
    try:
        data = run_benchmark(
            models=[DEMO["model"]],
            optimizers=args.optimizers,
            dataset=args.dataset,
            data_root=args.data_root,
            seeds=args.seeds,
            steps=args.steps,
            batch=DEMO["batch"],
            eval_every=DEMO["eval_every"],
            tune_budget=0,
            val_size=DEMO["val_size"],
            fixed_hparams=DEMO["hparams"],
            quiet=args.quiet,
            log=_log(args),
        )
    except (DatasetMissingError, ChecksumError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data["hparams_source"] = DEMO["hparams_source"]
    data["wall_s"] = time.perf_counter() - t0
    _print_tables(data)
    _write_outputs(data, "demo", args, "spectral-curv demo")
    return 0
