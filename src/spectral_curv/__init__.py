"""spectral_curv: spectral-factorized SPD curvature learning (Lin et al., ICML 2025).

The core (``full``, ``diag``, ``kron``, ``maps``, the optimizer step ``optim``, the SPD
solver ``spd`` and the gradient-free ``nes``) is written once against the Python array API
standard and imports no framework. Adapters: ``spectral_curv.torch``,
``spectral_curv.optax``, ``spectral_curv.numpy``.
"""

from . import diag, full, kron, maps, nes, optim, spd
from ._version import __version__

__all__ = ["__version__", "diag", "full", "kron", "maps", "nes", "optim", "spd"]
