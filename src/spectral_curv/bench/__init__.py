"""Benchmarks of :mod:`spectral_curv` (``spectral-curv bench …``); by role:

runners (one per subcommand)
    :mod:`.precond` preconditioner cost in matmul-equivalents (``bench precond``),
    :mod:`.step` optimizer step time on a small transformer (``bench optim``),
    :mod:`.train` training on real data, and the demo (``bench train``, ``demo``),
    :mod:`.soak` long bf16 stability runs (``bench soak``),
    :mod:`.roots` any matrix root p: lr sweeps of p = 1, 2, 4 (``bench roots``),
    :mod:`.heldout` a transformer LM held out for default changes (``bench heldout``),
    :mod:`.device` the GPU benchmark (``bench device``),
    :mod:`.bbob` NES on the COCO/BBOB suite (``python -m spectral_curv.bench.bbob``).
reports
    :mod:`.precond_report`, :mod:`.step_report` (their tables, markdown and plots) and
    :mod:`.report` (shared: machine info, threads, output folders, progress, tables,
    markdown sections).
inputs
    :mod:`.reference` the reference torch optimizers (MuonFP32, EighRefresh, Chain, on
    :mod:`spectral_curv.baselines`' Newton–Schulz and eigh refresh), :mod:`.data` the
    offline datasets.

Runs write to ``./spectral-curv-results/`` (``--out DIR``); ``--write-docs`` regenerates the
published ``docs/`` (maintainers, ``nox -s bench``). ``import spectral_curv`` imports none of
this; torch, matplotlib and tqdm are imported only where needed.
"""

from __future__ import annotations

__all__: list[str] = []
