"""The ``xp`` fixture: every test of the core runs on each installed array backend.

numpy, array-api-strict (strict flags: no boolean indexing, no data-dependent shapes),
torch (CPU, or CUDA when present), jax (float64 enabled; functions run under
``jax.jit`` via the ``jit`` fixture) and cupy when a GPU is present. Backends that are
not installed are skipped cleanly. Set ``SPECTRAL_CURV_BACKENDS=numpy,torch`` to pick.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np
import pytest

ALL_BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy")
_selected = os.environ.get("SPECTRAL_CURV_BACKENDS")
BACKENDS = tuple(_selected.split(",")) if _selected else ALL_BACKENDS


def _load(name: str) -> Any:
    """Import backend ``name`` and return its array-API namespace, or skip the test."""
    if name == "numpy":
        return array_api_compat.array_namespace(np.empty(0))
    if name == "array_api_strict":
        strict = pytest.importorskip("array_api_strict")
        strict.set_array_api_strict_flags(
            api_version="2024.12", boolean_indexing=False, data_dependent_shapes=False
        )
        return strict
    if name == "torch":
        torch = pytest.importorskip("torch")
        return array_api_compat.array_namespace(torch.empty(0))
    if name == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        return importlib.import_module("jax.numpy")
    if name == "cupy":
        cupy = pytest.importorskip("cupy")
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                pytest.skip("cupy: no GPU")
        except Exception as e:  # pragma: no cover - depends on the machine
            pytest.skip(f"cupy: no GPU ({e})")
        return array_api_compat.array_namespace(cupy.empty(0))
    raise ValueError(name)


@pytest.fixture(params=BACKENDS)
def xp(request: pytest.FixtureRequest) -> Any:
    """The array namespace under test."""
    ns = _load(request.param)
    if request.param == "torch":
        import torch

        prev = torch.get_default_device()
        if torch.cuda.is_available():
            torch.set_default_device("cuda")
        yield ns
        torch.set_default_device(prev)
    else:
        yield ns


def backend(xp: Any) -> str:
    from spectral_curv.backends import backend_name

    return backend_name(xp)


@pytest.fixture
def jit(xp: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``jit(fn)``: ``jax.jit(fn)`` on jax (hyperparameters bound by the caller), else ``fn``."""
    if backend(xp) == "jax":
        import jax

        return jax.jit
    return lambda fn: fn


def to_numpy(x: Any) -> np.ndarray:
    """Copy any backend's array to a numpy array (host)."""
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_array_api_strict_namespace(array_api_compat.array_namespace(x)):
        return np.from_dlpack(x)
    return np.asarray(x)


def asarray(xp: Any, a: Any, dtype: Any = None) -> Any:
    """numpy data → ``xp`` array (float64 by default)."""
    return xp.asarray(np.asarray(a), dtype=xp.float64 if dtype is None else dtype)


@pytest.fixture
def paper_rule(monkeypatch):
    """The paper's basis update ``U_ij = −W_ij/(d_i − d_j)`` as the core's default
    (``maps.DEFAULT_ROTATION``), for tests that check SPEC §2/§4's formulas against an
    explicit reference. The damped default is tested in tests/test_tie_damping.py."""
    from spectral_curv import maps

    monkeypatch.setattr(maps, "DEFAULT_ROTATION", "paper")
