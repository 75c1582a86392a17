"""Benchmarks of :mod:`spectral_curv` (``spectral-curv bench …``); by role:

runners (one per subcommand)
    :mod:`.precond` preconditioner cost in matmul-equivalents (``bench precond``),
    :mod:`.step` optimizer step time on a small transformer (``bench optim``),
    :mod:`.train` training on real data, and the demo (``bench train``, ``demo``),
    :mod:`.soak` long bf16 stability runs (``bench soak``),
    :mod:`.bbob` NES on the COCO/BBOB suite (``python -m spectral_curv.bench.bbob``).
reports
    :mod:`.precond_report`, :mod:`.step_report` (their tables, markdown and plots) and
    :mod:`.report` (shared: machine info, threads, output folders, progress, tables,
    markdown sections).
inputs
    :mod:`.reference` the baselines (Muon's Newton–Schulz, eigh refresh, MuonFP32,
    EighRefresh, Chain), :mod:`.data` the offline datasets.

Runs write to ``./spectral-curv-results/`` (``--out DIR``); ``--write-docs`` regenerates the
published ``docs/`` (maintainers, ``nox -s bench``). ``import spectral_curv`` imports none of
this; torch, matplotlib and tqdm are imported only where needed.
"""

from __future__ import annotations

__all__: list[str] = []
