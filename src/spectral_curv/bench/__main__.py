"""``python -m spectral_curv.bench {precond,optim,train,soak} [options]``.

See :mod:`spectral_curv.bench.precond`, :mod:`spectral_curv.bench.optim` and
:mod:`spectral_curv.bench.train`.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spectral_curv.bench",
        description="Microbenchmarks of spectral_curv.",
    )
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser(
        "precond",
        help="refresh + step cost in matmul-equivalents (spectral vs eigh vs Muon)",
        description=(
            "Time the Kronecker spectral refresh + step, an eigh refresh of both factors "
            "(Shampoo/SOAP) and Muon's 5 Newton-Schulz steps, in fp32 on CPU, as multiples "
            "of one n x n x n matmul measured in the same run."
        ),
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="square layer sizes (default 256 512 1024 2048; --quick: 128 256)",
    )
    p.add_argument(
        "--backend",
        nargs="+",
        choices=("numpy", "torch"),
        default=None,
        help="backends to time (default: numpy, and torch when installed)",
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
    p.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
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
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: n = 128 256, 3 rounds, writes nothing unless asked",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="MD",
        help="markdown file whose benchmark section is (re)written "
        "(default docs/benchmarks.md; not with --quick)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="PNG plot path (default docs/img/precond_cost.png; not with --quick)",
    )
    p.add_argument(
        "--no-write",
        action="store_true",
        help="print only: write neither the markdown nor the plot",
    )
    p.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also write the raw numbers as JSON to PATH ('-' for stdout; default "
        "docs/benchmarks_precond.json, not with --quick or --no-write)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    from .optim import add_arguments as optim_arguments  # imports no framework

    optim_arguments(
        sub.add_parser(
            "optim",
            help="training-step time: SpectralKron vs AdamW, Muon and an eigh refresh",
            description="Whole-step and opt.step() time of SpectralKron vs torch.optim.AdamW, "
            "torch.optim.Muon and an eigh refresh on a small transformer "
            "(see spectral_curv.bench.optim).",
        )
    )
    from .train import add_arguments as train_arguments  # imports no framework

    train_arguments(
        sub.add_parser(
            "train",
            help="training benchmark on real data: loss/accuracy curves per optimizer",
            description="Tune and train MLP / CNN / ViT on Fashion-MNIST (or sklearn digits) with "
            "AdamW, Muon, SpectralKron, SOAP, Shampoo and PSGD Kron; writes "
            "docs/benchmarks_train.md, a JSON of every curve and PNG plots "
            "(see spectral_curv.bench.train).",
        )
    )
    from .soak import add_arguments as soak_arguments

    soak_arguments(
        sub.add_parser(
            "soak",
            help="stability soak: 5,000-step bf16 MLP runs and a 10^5-step drift run",
            description="Long bf16 training runs (bf16 and f32 factors, several seeds, default "
            "and exact modes) and a 10^5-step orthogonality-drift run; writes "
            "docs/benchmarks_soak.md (see spectral_curv.bench.soak).",
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bench == "precond":
        from . import precond

        if args.no_write:
            args.out = args.plot = None
        else:
            if args.out is None and not args.quick:
                args.out = "docs/benchmarks.md"
            if args.plot is None and not args.quick:
                args.plot = "docs/img/precond_cost.png"
            if args.json is None and not args.quick:
                args.json = "docs/benchmarks_precond.json"
        return precond.main(args)
    if args.bench == "optim":
        from . import optim

        return optim.main(args)
    if args.bench == "train":
        from . import train

        return train.main(args)
    if args.bench == "soak":
        from . import soak

        return soak.main(args)
    return 2  # pragma: no cover - argparse rejects unknown subcommands


if __name__ == "__main__":
    sys.exit(main())
