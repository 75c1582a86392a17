"""``spectral-curv`` console script.

``spectral-curv demo [options]``
    the small training demo (:func:`spectral_curv.bench.train.demo_main`): AdamW vs Muon vs
    SpectralKron on Fashion-MNIST (or scikit-learn's digits), a table in ≤ 3 minutes.
``spectral-curv bench {precond,optim,train} [options]``
    the benchmarks of :mod:`spectral_curv.bench`.
``spectral-curv reproduce {fig2,fig3,fig7,fig8,fig9,all} [--quick]``
    the paper's CPU-sized experiments (:mod:`spectral_curv.reproduce`).

Each command's options: ``spectral-curv demo --help``, ``spectral-curv bench train --help``.
"""

from __future__ import annotations

import argparse
import sys

USAGE = (
    "usage: spectral-curv demo [options]\n"
    "       spectral-curv bench {precond,optim,train} [options]\n"
    "       spectral-curv reproduce {fig2,fig3,fig7,fig8,fig9,all} [--quick]  "
    "(details: ... --help)"
)


def demo_parser() -> argparse.ArgumentParser:
    """Parser of ``spectral-curv demo`` (imports no framework)."""
    from .bench.train import add_demo_arguments

    p = argparse.ArgumentParser(
        prog="spectral-curv demo",
        description="Train an MLP on Fashion-MNIST (scikit-learn's digits when Fashion-MNIST "
        "is not installed) with AdamW, Muon (fp32 Newton–Schulz) and SpectralKron "
        "at fixed hyperparameters over a few seeds; prints a table and writes "
        "docs/benchmarks_train.md, docs/benchmarks_train.json and a PNG.",
    )
    add_demo_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``demo`` or ``bench ...`` (dispatched to :mod:`spectral_curv.bench`)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] == "bench":
        from .bench.__main__ import main as bench_main

        return bench_main(args[1:])
    if args[0] == "demo":
        from .bench.train import demo_main

        return demo_main(demo_parser().parse_args(args[1:]))
    if args[0] == "reproduce":
        from .reproduce import main as reproduce_main

        return reproduce_main(args[1:])
    print(
        f"spectral-curv: unknown command {args[0]!r} (known: demo, bench, reproduce)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
