"""``torch.optim`` adapter: :class:`SpectralKron` and the functional :func:`spectral_kron`.

Every number and the order of a step come from the engine, :mod:`spectral_curv.optim`
(``Options``, ``buckets``, ``precondition_step``, ``update_param``; math §3–§5). This package
owns only torch's conventions: ``state`` storage, param groups, stacking same-shaped layers
into one batched refresh, ``torch._foreach_*`` kernels for the last step, checkpoints. Laid
out as ``_functional`` (:func:`init_state`, :func:`spectral_kron`: buckets, the last step),
``_optimizer`` (:class:`SpectralKron`: param groups, ``state``, the step's checks),
``_compile`` (``torch.compile``: the ``torch.where``-selected skip) and ``_checkpoint``
(``load_state_dict``, validated).

Routing (``optim.plan``): order ≥ 2 weights get the Kronecker factors on
``(shape[0], prod(shape[1:]))`` (size-1 dimensions dropped first), a side longer than
``max_precond_dim`` kept diagonal; order ≤ 1 (biases, norms) the diagonal scheme. Example::

    >>> import torch
    >>> from spectral_curv.torch import SpectralKron
    >>> model = torch.nn.Linear(4, 3)
    >>> opt = SpectralKron(model.parameters(), lr=1e-2)
    >>> model(torch.randn(8, 4)).square().mean().backward()
    >>> opt.step()
"""

from __future__ import annotations

from ._compile import CompileFallbackWarning, compile_step
from ._functional import init_state, spectral_kron
from ._optimizer import SpectralKron

__all__ = ["CompileFallbackWarning", "SpectralKron", "compile_step", "init_state", "spectral_kron"]
