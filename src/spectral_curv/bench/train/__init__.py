"""Training benchmark (``spectral-curv bench train``) and demo (``spectral-curv demo``).

The same models are trained with several optimizers on offline data (:mod:`..data`:
Fashion-MNIST from the Debian package, or scikit-learn's digits). ``bench train`` tunes each
(model, optimizer) with the same budget, re-runs the best trial over several seeds and adds
a step-time sweep over SpectralKron's refresh interval; ``demo`` is the small
fixed-hyperparameter version (one MLP, four optimizers, 2 seeds × 150 steps: about a minute
on a 2-core CPU) that prints a table. Both write to an output folder, or regenerate
``docs/benchmarks_train.md`` with ``--write-docs``.

:mod:`.models` the classifiers; :mod:`.registry` the optimizers and the demo's settings;
:mod:`.runner` one run, tuning, the sweep and the summary; :mod:`.report` tables, markdown
and plots; :mod:`.cli` the two command lines. No framework is imported at import time.
"""

from __future__ import annotations

from .cli import add_arguments, add_demo_arguments, demo_main, main
from .models import MODELS, build_model
from .registry import (
    ALL_OPTIMIZERS,
    DEFAULT_BENCH_OPTIMIZERS,
    DEMO,
    REUSE_TUNING,
    OptSpec,
    optimizer_registry,
    sample_hparams,
    unavailable,
)
from .runner import STEADY_SKIP, SWEEP_INTERVALS, run_benchmark, summarize, train_run

__all__ = [
    "ALL_OPTIMIZERS",
    "DEFAULT_BENCH_OPTIMIZERS",
    "DEMO",
    "MODELS",
    "REUSE_TUNING",
    "STEADY_SKIP",
    "SWEEP_INTERVALS",
    "OptSpec",
    "add_arguments",
    "add_demo_arguments",
    "build_model",
    "demo_main",
    "main",
    "optimizer_registry",
    "run_benchmark",
    "sample_hparams",
    "summarize",
    "train_run",
    "unavailable",
]
