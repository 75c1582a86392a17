"""A held-out check for default changes: a small causal transformer language model on a
synthetic order-2 Markov source (nothing in the library is tuned on it), an lr grid per
configuration. ``python -m spectral_curv.bench heldout`` (``spectral-curv bench heldout``).

The source: 32 tokens, next-token probabilities ``softmax(2·N(0, 1))`` per pair of previous
tokens, one fixed draw (seed 1234); its mean conditional entropy is 2.12 nats, the floor of
the test loss. The model: token + learned position embeddings, 2 pre-norm encoder layers
(width 64, 4 heads, MLP 128) with a causal mask, a linear head. Batches of 32 sequences of
32 tokens, fresh every step; test loss on 512 held-out sequences. Every configuration is
``SpectralKron`` with the default options but the ones named (``--configs``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CONFIGS", "ENTROPY_FLOOR", "add_arguments", "lm_run", "main"]

VOCAB, LENGTH, BATCH = 32, 32, 32
#: The source's mean conditional entropy (nats): no model's test loss can go below it.
ENTROPY_FLOOR = 2.116
#: Named configurations: ``SpectralKron`` keyword arguments besides lr and weight decay.
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "p2": {"p": 2.0},
    "p1": {"p": 1.0},
    "quartic_r5": {"cayley": "quartic", "reorth_interval": 5},
    "exact": {"cayley": "exact"},
    "damp16": {"damping": 1e-16},
}


def _source() -> Any:
    """``batch(n, rng)``: ``n`` token sequences of length ``LENGTH + 1`` from the fixed source."""
    import torch

    rng = np.random.default_rng(1234)
    prob = np.exp(2.0 * rng.standard_normal((VOCAB, VOCAB, VOCAB)))
    cum = np.cumsum(prob / prob.sum(-1, keepdims=True), axis=-1)

    def batch(n: int, rng: np.random.Generator) -> Any:
        x = np.empty((n, LENGTH + 1), dtype=np.int64)
        x[:, :2] = rng.integers(0, VOCAB, (n, 2))
        for t in range(2, LENGTH + 1):
            u = rng.random(n)[:, None]
            x[:, t] = np.minimum((u > cum[x[:, t - 2], x[:, t - 1]]).sum(-1), VOCAB - 1)
        return torch.from_numpy(x)

    return batch


def _model() -> Any:
    import torch

    class LM(torch.nn.Module):
        def __init__(self, width: int = 64) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(VOCAB, width)
            self.pos = torch.nn.Parameter(0.02 * torch.randn(LENGTH, width))
            layer = torch.nn.TransformerEncoderLayer(
                width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True
            )
            self.enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(width, VOCAB)
            self.register_buffer(
                "mask", torch.nn.Transformer.generate_square_subsequent_mask(LENGTH)
            )

        def forward(self, x: Any) -> Any:
            h = self.enc(self.emb(x) + self.pos, mask=self.mask, is_causal=True)
            return self.head(h)

    return LM()


def lm_run(config: dict[str, Any], *, lr: float, seed: int, steps: int) -> float:
    """Test loss after ``steps`` steps of ``SpectralKron(lr=lr, weight_decay=1e-2, **config)``
    (NaN if a training loss went non-finite).

    Example::

        >>> from spectral_curv.bench.heldout import lm_run
        >>> loss = lm_run({}, lr=1e-3, seed=0, steps=3)
        >>> 2.116 < loss < 4.0  # above the source's entropy; near log 32 = 3.47 at the start
        True
    """
    import torch

    from ..torch import SpectralKron

    batch = _source()
    test = batch(512, np.random.default_rng(999))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = _model()
    opt = SpectralKron(model.parameters(), lr=lr, weight_decay=1e-2, **config)

    def loss_of(x: Any) -> Any:
        logits = model(x[:, :-1]).reshape(-1, VOCAB)
        return torch.nn.functional.cross_entropy(logits, x[:, 1:].reshape(-1))

    for _ in range(steps):
        loss = loss_of(batch(BATCH, rng))
        opt.zero_grad()
        loss.backward()
        if not math.isfinite(loss.item()):
            return math.nan
        opt.step()
    with torch.no_grad():
        return float(loss_of(test))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--configs", nargs="+", default=["default", "p2"], choices=sorted(CONFIGS),
        help="configurations (default: default p2)",
    )  # fmt: skip
    p.add_argument("--lrs", nargs="+", type=float, default=[5e-4, 1e-3, 2e-3])
    p.add_argument("--seeds", type=int, default=2, help="seeds per lr (default 2)")
    p.add_argument("--steps", type=int, default=2000, help="steps per run (default 2000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", metavar="DIR", help="also write DIR/heldout.json (every run)")


def main(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.configs:
        for lr in args.lrs:
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                loss = lm_run(CONFIGS[name], lr=lr, seed=seed, steps=args.steps)
                rows.append({"config": name, "lr": lr, "seed": seed, "test_loss": loss,
                             "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    print(f"held-out LM, {args.steps} steps, test loss (floor {ENTROPY_FLOOR}), mean over seeds")
    print("config".ljust(12) + "".join(f"lr {lr:g}".rjust(12) for lr in args.lrs))
    for name in args.configs:
        means = [
            np.mean([r["test_loss"] for r in rows if r["config"] == name and r["lr"] == lr])
            for lr in args.lrs
        ]
        print(name.ljust(12) + "".join(f"{m:12.4f}" for m in means))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "heldout.json").write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=1))
        print(f"wrote {out / 'heldout.json'}")
    return 0
