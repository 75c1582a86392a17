"""The ``spectral-curv`` console script: ``demo``, ``bench …`` and ``reproduce …``.

``spectral-curv --help`` lists the commands; ``spectral-curv <command> --help`` their
options. Every command writes to ``./spectral-curv-results/`` (``--out DIR``), never to the
repository's ``docs/`` unless ``--write-docs`` is given.
"""

from __future__ import annotations

import argparse
import sys

DEMO_DESCRIPTION = (
    "Train an MLP on Fashion-MNIST (scikit-learn's digits when Fashion-MNIST is not "
    "installed) with AdamW, Muon (fp32 Newton–Schulz) and SpectralKron at fixed "
    "hyperparameters, 2 seeds × 150 steps (about a minute on a 2-core CPU); prints a table "
    "and writes demo.md, demo.json and a PNG to the output folder."
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (imports no framework)."""
    from . import reproduce
    from .bench.__main__ import add_subcommands
    from .bench.train import add_demo_arguments

    parser = argparse.ArgumentParser(
        prog="spectral-curv",
        description="Demo, benchmarks and paper reproductions of spectral-curv.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench,reproduce}")
    add_demo_arguments(
        sub.add_parser(
            "demo",
            help="small training demo: AdamW vs Muon vs SpectralKron, a table in about a minute",
            description=DEMO_DESCRIPTION,
        )
    )
    add_subcommands(
        sub.add_parser(
            "bench",
            help="benchmarks: precond, optim (step time), train, soak",
            description="Benchmarks of spectral_curv (also: python -m spectral_curv.bench).",
        )
    )
    reproduce.add_arguments(
        sub.add_parser(
            "reproduce",
            help="the paper's experiments at CPU size (fig2, fig3, fig7, fig8, fig9)",
            description=reproduce.DESCRIPTION,
            epilog=reproduce.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    return parser


def demo_parser() -> argparse.ArgumentParser:
    """Parser of ``spectral-curv demo`` alone (imports no framework)."""
    from .bench.train import add_demo_arguments

    p = argparse.ArgumentParser(prog="spectral-curv demo", description=DEMO_DESCRIPTION)
    add_demo_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, then run the command."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command == "bench":
        from .bench.__main__ import run

        return run(args)
    if args.command == "demo":
        from .bench.train import demo_main

        return demo_main(args)
    from .reproduce import run_args

    return run_args(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
