"""spectral_curv: spectral-factorized SPD curvature learning (Lin et al., ICML 2025).

The core (``full``, ``diag``, ``kron``, ``maps``) is written once against the Python
array API standard and imports no framework; see ``../shared/SPEC.md`` for the math.
"""

from . import diag, full, kron, maps
from ._version import __version__

__all__ = ["__version__", "diag", "full", "kron", "maps"]
