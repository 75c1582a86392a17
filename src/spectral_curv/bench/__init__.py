"""Microbenchmarks of :mod:`spectral_curv` (``python -m spectral_curv.bench precond``).

:mod:`spectral_curv.bench.precond` times one Kronecker refresh + preconditioned step of
the spectral scheme (``kron.precondition_and_update``) in *matmul-equivalents* (time ÷
time of one n×n×n matmul measured in the same run), beside a Shampoo/SOAP-style
eigendecomposition refresh and Muon's five Newton–Schulz steps. Nothing here is imported
by ``import spectral_curv``; matplotlib is imported only when a plot is asked for.
"""

from __future__ import annotations

__all__ = ["precond"]
