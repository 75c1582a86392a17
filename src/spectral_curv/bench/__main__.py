"""``python -m spectral_curv.bench {precond,optim,train,soak,roots,heldout,device} [options]``
(also reached as ``spectral-curv bench``)."""

from __future__ import annotations

import argparse
import sys

#: (name, one-line help, description) of every subcommand.
SUBCOMMANDS = (
    (
        "precond",
        "refresh-step cost in matmul-equivalents (spectral vs eigh vs Muon)",
        "Time one refresh step of the Kronecker spectral preconditioner as SpectralKron runs "
        "it (optim.refresh_and_direction), an eigh refresh of both factors "
        "(Shampoo/SOAP) and Muon's 5 Newton-Schulz steps, in fp32 on CPU, as multiples of "
        "one n x n x n matmul measured in the same run.",
    ),
    (
        "optim",
        "training-step time: SpectralKron vs AdamW, Muon and an eigh refresh",
        "Whole-step and opt.step() time of SpectralKron vs torch.optim.AdamW, "
        "torch.optim.Muon and an eigh refresh on a small transformer "
        "(module spectral_curv.bench.step).",
    ),
    (
        "train",
        "training benchmark on real data: loss/accuracy curves per optimizer",
        "Tune and train MLP / CNN / ViT on Fashion-MNIST (or sklearn digits) with AdamW, "
        "Muon, SpectralKron, SOAP, Shampoo and PSGD Kron; writes a report, a JSON of every "
        "curve and PNG plots (module spectral_curv.bench.train).",
    ),
    (
        "soak",
        "stability soak: 5,000-step bf16 MLP runs and a 10^5-step drift run",
        "Long bf16 training runs (bf16 and f32 factors, several seeds, default and exact "
        "modes) and a 10^5-step orthogonality-drift run (module spectral_curv.bench.soak).",
    ),
    (
        "roots",
        "any matrix root p: lr sweep of p = 1, 2, 4 on an autoencoder, diverging runs",
        "Full-batch tanh autoencoder on scikit-learn's digits: one lr grid for SpectralKron "
        "p = 1, 2, 4 (step_scale='p2'), p = 1 with the raw step and AdamW; then runs at "
        "1000x the best lr, which must never raise from step() (module "
        "spectral_curv.bench.roots).",
    ),
    (
        "heldout",
        "held-out check: a small transformer LM on a synthetic source, lr grid per config",
        "A causal 2-layer transformer on a fixed order-2 Markov source (nothing is tuned on "
        "it): the test loss of SpectralKron configurations (the defaults, p = 2, ...) over an "
        "lr grid and seeds (module spectral_curv.bench.heldout).",
    ),
    (
        "device",
        "GPU benchmark: refresh cost, whole step vs AdamW/Muon/SOAP, CuPy vs torch",
        "One short GPU run (<= 5 minutes on one H100/H200): the refresh step with bf16 and "
        "fp32 factors vs an fp32 eigh refresh and Muon's Newton-Schulz, stacked layers, the "
        "whole training step of a GPT-2-small-like stack vs AdamW, Muon and SOAP with peak "
        "memory, and the CuPy backend vs torch; PASS/FAIL targets. --device cpu --tiny is a "
        "dry run (module spectral_curv.bench.device).",
    ),
)


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """The benchmark subcommands under ``parser`` (imports no framework)."""
    from . import device, heldout, precond, roots, soak, step, train

    adders = {
        "precond": precond.add_arguments,
        "optim": step.add_arguments,
        "train": train.add_arguments,
        "soak": soak.add_arguments,
        "roots": roots.add_arguments,
        "heldout": heldout.add_arguments,
        "device": device.add_arguments,
    }
    names = "{" + ",".join(adders) + "}"
    sub = parser.add_subparsers(dest="bench", required=True, metavar=names)
    for name, help_, description in SUBCOMMANDS:
        adders[name](sub.add_parser(name, help=help_, description=description))


def build_parser(prog: str = "python -m spectral_curv.bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Benchmarks of spectral_curv.")
    add_subcommands(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Dispatch parsed ``bench`` arguments to their runner."""
    if args.bench == "precond":
        from . import precond, precond_report

        return precond.main(args, precond_report)
    if args.bench == "optim":
        from . import step, step_report

        return step.main(args, step_report)
    if args.bench == "train":
        from . import train

        return train.main(args)
    if args.bench == "soak":
        from . import soak

        return soak.main(args)
    if args.bench == "roots":
        from . import roots

        return roots.main(args)
    if args.bench == "heldout":
        from . import heldout

        return heldout.main(args)
    if args.bench == "device":
        from . import device

        return device.main(args)
    return 2  # pragma: no cover - argparse rejects unknown subcommands


def main(argv: list[str] | None = None, prog: str = "python -m spectral_curv.bench") -> int:
    return run(build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
