"""Reproductions of the paper's experiments (math §6), as plain functions returning JSON-able dicts.

* :mod:`spectral_curv.experiments.matching` — Fig. 2 / 7 / 8: curvature matching of the
  full-matrix and Kronecker spectral schemes against the default, Cholesky and
  projection baselines.
* :mod:`spectral_curv.experiments.nes` — Fig. 3 / 9: gradient-free NES on the five test
  functions of Appx. C against xNES, Cholesky-NES and CMA-ES.
* :mod:`spectral_curv.experiments.spd_step_timing` — wall-clock of the SPD spectral step in
  the factored frame vs the former dense round trip (not imported here).
* :mod:`spectral_curv.experiments.spd_problems` — default-settings table of ``spd.minimize``
  (line search) against RGD-expm and pymanopt's conjugate gradient (not imported here).

No framework imports here; numpy float64 on the CPU (matplotlib is imported only by the
NES command line's ``--plot``).
"""

from . import matching, nes

__all__ = ["matching", "nes"]
