"""Command lines of ``spectral-curv bench train`` and ``spectral-curv demo``: options, what
each run writes (an output folder, or the published docs with ``--write-docs``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .. import report
from ..report import Outputs
from .models import MODELS
from .registry import ALL_OPTIMIZERS, DEFAULT_BENCH_OPTIMIZERS, DEMO
from .report import HEADER, markdown_section, markers, plot_model, precond_lines, print_tables
from .runner import run_benchmark

__all__ = ["add_arguments", "add_demo_arguments", "demo_main", "main"]

DOCS_FILES = "docs/benchmarks_train.md, docs/benchmarks_train.json and docs/img/train_*.png"
#: The options of ``bench train`` that go to :func:`run_benchmark` as they are (``--quick``
#: replaces them).
RUN_OPTIONS = (
    "models",
    "optimizers",
    "seeds",
    "steps",
    "eval_every",
    "tune_budget",
    "tune_steps",
    "batch",
    "sweep_steps",
    "sweep_repeats",
)


def _common_arguments(p: argparse.ArgumentParser) -> None:
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
    report.add_threads_argument(p)
    report.add_output_arguments(p, docs=DOCS_FILES)
    report.add_quiet_argument(p, "no progress bar")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``bench train``."""
    report.add_choices_argument(
        p, "--models", MODELS, default=list(MODELS), help="models (default: mlp cnn vit)"
    )
    report.add_choices_argument(
        p,
        "--optimizers",
        ALL_OPTIMIZERS,
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
        help="do not run: re-print, re-plot and rewrite the report from the 'bench' key of a "
        "JSON this command wrote",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: digits, mlp, 3 optimizers, 1 seed, 2 trials of 5 steps, "
        "a 1-round sweep of 3 steps; its files are named *_quick*",
    )
    _common_arguments(p)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``spectral-curv demo``."""
    p.add_argument(
        "--steps", type=int, default=DEMO["steps"], help=f"steps per run (default {DEMO['steps']})"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=DEMO["seeds"],
        help=f"seeds (default {DEMO['seeds']}; the run time grows in proportion)",
    )
    report.add_choices_argument(
        p,
        "--optimizers",
        tuple(DEMO["hparams"]),
        default=list(DEMO["optimizers"]),
        metavar="KEY",
        help="optimizers (default: " + " ".join(DEMO["optimizers"]) + ")",
    )
    _common_arguments(p)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _header(name: str, threads: dict[str, Any], out: Outputs) -> None:
    print(f"{name}: {report.threads_line(threads)}", flush=True)
    out.announce()


def write_outputs(
    data: dict[str, Any], name: str, out: Outputs, command: str, from_json: str | None = None
) -> None:
    """The plots, the JSON (under key ``name``) and the markdown section of one run."""
    quick = "_quick" if data["config"].get("quick") and not out.docs else ""
    md = out.file("benchmarks_train.md", f"{'demo' if name == 'demo' else 'train'}.md")
    js = out.file("benchmarks_train.json", f"{'demo' if name == 'demo' else 'train'}.json")
    if md is None or js is None:
        return
    plots: dict[str, str] = {}
    ds = data["dataset"]["name"]
    for model, res in data["results"].items():
        png = f"train_demo_{model}.png" if name == "demo" else f"train_{ds}_{model}.png"
        path = out.file(f"img/{png}", png.replace("train_demo", "demo"))
        assert path is not None
        try:
            plot_model(
                res["runs"],
                res["rows"],
                path,
                target=res["target_loss"],
                title=f"{name}{' (quick run)' if quick else ''}: {model} on {ds}, CPU fp32, "
                f"mean ± sd over {data['config']['seeds']} seeds",
            )
        except ImportError as e:
            print(f"no plot ({e}); pip install matplotlib", file=sys.stderr)
            break
        plots[model] = str(report.rel(path, md.parent))
        print(f"wrote {path}", file=sys.stderr)
    if from_json is None:
        report.write_json(js, name, data)
        print(f"wrote {js} (key {name!r})", file=sys.stderr)
    json_rel = report.rel(from_json or js, md.parent)
    extra: list[str] = []
    if name == "bench":
        pj = out.file("benchmarks_precond.json", "precond.json")
        extra = precond_lines(pj) if pj is not None else []
    report.replace_section(
        md, markdown_section(data, name, plots, json_rel, command, extra), *markers(name), HEADER
    )
    print(f"wrote {md}", file=sys.stderr)
    print(f"results in {md.parent.resolve()}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``spectral-curv bench train``."""
    from ..data import ChecksumError, DatasetMissingError

    out = report.outputs(args, quick=args.quick)
    threads = report.set_threads(args.threads)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())["bench"]
        _header("bench train --from-json", threads, out)
        print_tables(data)
        write_outputs(
            data, "bench", out, data.get("command", "spectral-curv bench train"), args.from_json
        )
        return 0
    if args.quick:
        args.dataset = "digits" if args.dataset == "auto" else args.dataset
        opts = (
            args.optimizers
            if args.optimizers != list(DEFAULT_BENCH_OPTIMIZERS)
            else ["adamw", "muon_fp32", "spectral_p15"]
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
    else:
        kw = {k: getattr(args, k) for k in RUN_OPTIONS}
    _header(f"bench train{' (quick)' if args.quick else ''}", threads, out)
    js = out.file("benchmarks_train.json", "train.json")

    def save_partial(d: dict[str, Any]) -> None:
        if js is not None:
            report.write_json(js, "bench", {**d, "partial": True})

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
            log=_log,
            **kw,
        )  # type: ignore[arg-type]
    except (DatasetMissingError, ChecksumError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data["config"]["quick"] = bool(args.quick)
    print_tables(data)
    cmd = (
        "spectral-curv bench train " + " ".join(a for a in sys.argv[3:] if a != "--write-docs")
        if sys.argv[1:3] == ["bench", "train"]
        else "spectral-curv bench train (see config in the JSON)"
    )
    data["command"] = cmd.strip()
    write_outputs(data, "bench", out, cmd.strip())
    return 0


def demo_main(args: argparse.Namespace) -> int:
    """Entry point of ``spectral-curv demo``: fixed hyperparameters, one MLP, a table."""
    from ..data import ChecksumError, DatasetMissingError

    out = report.outputs(args)
    threads = report.set_threads(args.threads)
    _header("demo", threads, out)
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
            log=_log,
        )
    except (DatasetMissingError, ChecksumError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data["hparams_source"] = DEMO["hparams_source"]
    data["wall_s"] = time.perf_counter() - t0
    print_tables(data)
    write_outputs(data, "demo", out, "spectral-curv demo")
    return 0
