"""Reproductions of the paper's experiments (SPEC §6), as plain functions returning JSON-able dicts.

* :mod:`spectral_curv.experiments.matching` — Fig. 2 / 7 / 8: curvature matching of the
  full-matrix and Kronecker spectral schemes against the default, Cholesky and
  projection baselines.

No plotting and no framework imports here; numpy float64 on the CPU.
"""

from . import matching

__all__ = ["matching"]
