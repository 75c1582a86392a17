"""The ``xp`` fixture: every test of the core runs on each installed array backend.

numpy, array-api-strict (strict flags: no boolean indexing, no data-dependent shapes),
torch (CPU, or CUDA when present), jax (float64 enabled; functions run under
``jax.jit`` via the ``jit`` fixture) and cupy when a GPU is present. Backends that are
not installed are skipped cleanly. Set ``SPECTRAL_CURV_BACKENDS=numpy,torch`` to pick.

Also here:

- ``@pytest.mark.skip_backends("array_api_strict", "jax", reason="...")`` skips those
  parameters of the ``xp`` fixture (:func:`skip_marked_backends`);
- ``xp_assert_close`` / ``xp_assert_equal``: SciPy-style assertions that check the array
  namespace, dtype and shape before the values (a dtype-dependent default ``rtol``);
- hypothesis profiles (``tests/test_properties.py``): ``ci`` (the default, 25 examples,
  derandomized) and ``nightly`` (1000 examples): ``pytest --hypothesis-profile=nightly``;
- ``@pytest.mark.slow`` marks the long tests (≥ 10⁴ steps, reproductions):
  ``pytest -m "not slow"`` is the quick loop, CI runs everything.
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


def skip_marked_backends(request: pytest.FixtureRequest, name: str) -> None:
    """Skip the test when its closest ``skip_backends`` marker names backend ``name``.

    ``@pytest.mark.skip_backends("jax", "array_api_strict", reason="why")`` on a test, class
    or module; any fixture parametrised over backend names may call this."""
    marker = request.node.get_closest_marker("skip_backends")
    if marker is None:
        return
    unknown = set(marker.args) - set(ALL_BACKENDS)
    if unknown:
        raise ValueError(f"skip_backends: unknown backends {sorted(unknown)}")
    if name in marker.args:
        pytest.skip(f"{name}: {marker.kwargs.get('reason', 'skipped by skip_backends')}")


# jax's parameter compiles under ``jit`` in every core test (~75 s of the suite on one core):
# ``slow``, so that the contributors' ``-m "not slow"`` run stays under two minutes (CI runs
# it; the optax adapter's own tests run jax in the quick run too).
_PARAMS = [pytest.param(b, marks=pytest.mark.slow) if b == "jax" else b for b in BACKENDS]


@pytest.fixture(params=_PARAMS)
def xp(request: pytest.FixtureRequest) -> Any:
    """The array namespace under test (honours ``@pytest.mark.skip_backends``)."""
    skip_marked_backends(request, request.param)
    ns = _load(request.param)
    if request.param == "torch":
        import torch

        if torch.cuda.is_available():
            prev = torch.get_default_device()
            torch.set_default_device("cuda")
            try:
                yield ns
            finally:
                # None, not "cpu": setting any device pushes a torch function mode that
                # would then intercept every torch call of every later test
                torch.set_default_device(None if prev.type == "cpu" else prev)
        else:
            yield ns
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


def _plain_value(v: Any) -> Any:
    """``v`` with NumPy scalars/arrays as Python values (nested in tuples, lists, dicts)."""
    if isinstance(v, (np.generic, np.ndarray)):
        return v.tolist()
    if isinstance(v, (tuple, list)):
        return type(v)(_plain_value(x) for x in v)
    if isinstance(v, dict):
        return {k: _plain_value(x) for k, x in v.items()}
    return v


@pytest.fixture
def record_property(record_property: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    """pytest's, with NumPy values as Python ones: pytest-xdist cannot send a NumPy scalar
    from a worker (an INTERNALERROR that ends ``pytest -n 2``)."""
    return lambda name, value: record_property(name, _plain_value(value))


@pytest.fixture
def paper_rule(monkeypatch):
    """The paper's basis update ``U_ij = −W_ij/(d_i − d_j)`` as the core's default
    (``maps.DEFAULT_ROTATION``), for tests that check math §2/§4's formulas against an
    explicit reference. The damped default is tested in tests/test_tie_damping.py."""
    from spectral_curv import maps

    monkeypatch.setattr(maps, "DEFAULT_ROTATION", "paper")


# ----------------------------------------------------------------------------- assertions
def _default_rtol(dtype: Any) -> float:
    """``4·√eps`` of ``dtype`` (floating/complex), 0 for exact dtypes (ints, bools)."""
    name = str(dtype).rsplit(".", 1)[-1]
    if "float" in name or "complex" in name:
        eps = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}.get(name, 2.0**-52)
        if name == "complex64":
            eps = 2.0**-23
        return 4.0 * eps**0.5
    return 0.0


def _check_like(actual: Any, desired: Any, xp: Any, err_msg: str) -> None:
    """Namespace, dtype and shape equality (the checks before any value comparison)."""

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise AssertionError(f"{what} ({err_msg})" if err_msg else what)

    want_ns = array_api_compat.array_namespace(desired) if xp is None else xp
    got_ns = array_api_compat.array_namespace(actual)
    check(got_ns is want_ns, f"namespace: got {got_ns.__name__}, want {want_ns.__name__}")
    desired_ns = array_api_compat.array_namespace(desired)
    check(
        desired_ns is want_ns,
        f"namespace of `desired`: got {desired_ns.__name__}, want {want_ns.__name__}",
    )
    check(actual.dtype == desired.dtype, f"dtype: got {actual.dtype}, want {desired.dtype}")
    got, want = tuple(actual.shape), tuple(desired.shape)
    check(got == want, f"shape: got {got}, want {want}")


def xp_assert_close(
    actual: Any,
    desired: Any,
    *,
    rtol: float | None = None,
    atol: float = 0,
    xp: Any = None,
    err_msg: str = "",
) -> None:
    """Assert ``actual`` ≈ ``desired``: same array namespace (``xp`` when given), same dtype,
    same shape, then ``|actual − desired| ≤ atol + rtol·|desired|`` elementwise (NaNs must
    match). ``rtol=None``: ``4·√eps`` of the dtype (float64 ≈ 6e-8, float32 ≈ 1.4e-3), as
    SciPy's ``_lib._array_api.xp_assert_close``.

    >>> import numpy as np
    >>> xp_assert_close(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-9]))
    >>> xp_assert_close(np.float32([1.0]), np.array([1.0]))
    Traceback (most recent call last):
    ...
    AssertionError: dtype: got float32, want float64
    """
    _check_like(actual, desired, xp, err_msg)
    if rtol is None:
        rtol = _default_rtol(desired.dtype)
    np.testing.assert_allclose(
        to_numpy(actual), to_numpy(desired), rtol=rtol, atol=atol, equal_nan=True, err_msg=err_msg
    )


def xp_assert_equal(actual: Any, desired: Any, *, xp: Any = None, err_msg: str = "") -> None:
    """Assert ``actual`` equals ``desired`` exactly (same namespace, dtype, shape and values;
    NaNs in the same places count as equal).

    >>> import numpy as np
    >>> xp_assert_equal(np.arange(3), np.arange(3))
    """
    _check_like(actual, desired, xp, err_msg)
    np.testing.assert_array_equal(to_numpy(actual), to_numpy(desired), err_msg=err_msg)


# ----------------------------------------------------------------------------- hypothesis
try:  # profiles of tests/test_properties.py; `--hypothesis-profile=nightly` picks the other
    from hypothesis import HealthCheck, settings

    _SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile(
        "ci",
        max_examples=25,
        deadline=None,
        derandomize=True,  # the same examples on every run: no flaky CI
        database=None,
        print_blob=True,
        suppress_health_check=_SLOW_OK,
    )
    settings.register_profile(
        "nightly", max_examples=1000, deadline=None, print_blob=True, suppress_health_check=_SLOW_OK
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - hypothesis is in the `test` extra
    pass
