"""Cross-backend consistency: the same float64 inputs give the same 100-step iterates.

Seeded numpy gradient sequences and a non-trivial initial state (built once in numpy and
copied to each backend, so no backend-dependent eigenvector signs) are fed to
``full.update_gop``, ``diag.update_gop`` and ``kron.precondition_and_update`` on every
backend (jax under ``jax.jit``); every iterate is compared with the numpy run to 1e-10
relative (Frobenius norm per field and step), in the exact modes and in the cheap
neumann-Cayley / first-order-exp modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from conftest import asarray, backend, to_numpy
from spectral_curv import diag, full, kron

N_STEPS = 100
RTOL = 1e-10

# (cayley, exp, gamma, damping)
MODES = [
    ("exact", "exact", 1.0, 0.0),
    ("neumann", "first_order", 1.0, 1e-3),
    ("quadratic", "first_order", 0.0, 1e-3),
]
DIAG_MODES = [("exact", 1.0, 0.0), ("first_order", 0.0, 1e-3)]


BETA2 = 0.02


def _cayley(x: np.ndarray) -> np.ndarray:
    i = np.eye(x.shape[0])
    return (i + x) @ np.linalg.inv(i - x)


def _target_and_start(rng: np.random.Generator, n: int, spread: float):
    """A covariance ``Σ`` with well-separated eigenvalues (log-gaps ≥ 2·spread/(n−1)) and a
    start near it: eigenvectors rotated, eigenvalues perturbed (ordering kept).

    Well-separated spectra keep the exact (un-normalised) scheme away from eigenvalue
    crossings, where ``U_ij = −W_ij/(d_i − d_j)`` blows up and round-off differences between
    backends are amplified without bound (the neumann mode's capped step is immune).
    """
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    logs = np.linspace(-spread, spread, n)
    sigma = (q * np.exp(logs)) @ q.T
    a = rng.standard_normal((n, n))
    q0 = q @ _cayley(0.05 * (a - a.T))
    s0 = (q0 * np.exp(logs + rng.uniform(-0.2, 0.2, n))) @ q0.T
    return sigma, s0


def _kron_inputs() -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    rng = np.random.default_rng(100)
    r, c = 5, 4
    sig_c, s_c = _target_and_start(rng, r, 2.0)
    sig_k, s_k = _target_and_start(rng, c, 1.5)
    st = kron.from_factors(s_c, 2.0 * s_k, 0.5)
    lc, lk = np.linalg.cholesky(sig_c), np.linalg.cholesky(sig_k)
    fields = tuple(None if f is None else np.asarray(f) for f in st)
    return fields, lc @ rng.standard_normal((N_STEPS, r, c)) @ lk.T


def _full_inputs() -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    rng = np.random.default_rng(200)
    n = 6
    sigma, s0 = _target_and_start(rng, n, 2.5)
    st = full.from_dense(s0)
    lg = np.linalg.cholesky(sigma)
    return tuple(np.asarray(f) for f in st), rng.standard_normal((N_STEPS, n)) @ lg.T


def _diag_inputs() -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    rng = np.random.default_rng(300)
    d0 = np.exp(rng.uniform(-1.0, 1.0, (3, 4)))
    scale = np.exp(rng.uniform(-1.0, 1.0, (3, 4)))
    return (d0,), scale * rng.standard_normal((N_STEPS, 3, 4))


# One step function per (scheme, mode), defined once so that jax.jit traces it once.
_FNS: dict[tuple, Callable[..., Any]] = {}


def _step_fn(scheme: str, mode: tuple) -> Callable[..., Any]:
    key = (scheme, mode)
    if key in _FNS:
        return _FNS[key]
    if scheme == "kron":
        cayley, exp, gamma, damping = mode

        def fn(st, g):
            new, step = kron.precondition_and_update(
                st, g, p=2, beta2=BETA2, gamma=gamma, damping=damping, cayley=cayley, exp=exp
            )
            return new, (*new, step)

    elif scheme == "full":
        cayley, exp, gamma, damping = mode

        def fn(st, g):
            step = full.precondition(st, g, p=2)
            new = full.update_gop(
                st, g, beta2=BETA2, gamma=gamma, damping=damping, cayley=cayley, exp=exp
            )
            return new, (*new, step)

    else:
        exp, gamma, damping = mode

        def fn(st, g):
            step = diag.precondition(st, g, p=2)
            new = diag.update_gop(st, g, beta2=BETA2, gamma=gamma, damping=damping, exp=exp)
            return new, (*new, step)

    _FNS[key] = fn
    return fn


_INPUTS = {"kron": _kron_inputs, "full": _full_inputs, "diag": _diag_inputs}
_STATE = {"kron": kron.KronState, "full": full.SpectralState, "diag": diag.DiagState}
_REFERENCE: dict[tuple, list[list[np.ndarray]]] = {}


def _run(xp: Any, jit: Callable, scheme: str, mode: tuple) -> list[list[np.ndarray]]:
    fields, gs = _INPUTS[scheme]()
    st = _STATE[scheme](*(None if f is None else asarray(xp, f) for f in fields))
    fn = jit(_step_fn(scheme, mode))
    out = []
    for g in gs:
        st, rec = fn(st, asarray(xp, g))
        out.append([to_numpy(x) for x in rec if x is not None])
    return out


def _reference(scheme: str, mode: tuple) -> list[list[np.ndarray]]:
    key = (scheme, mode)
    if key not in _REFERENCE:
        import array_api_compat

        np_xp = array_api_compat.array_namespace(np.empty(0))
        _REFERENCE[key] = _run(np_xp, lambda f: f, scheme, mode)
    return _REFERENCE[key]


def _cases() -> list[Any]:
    cases = [pytest.param("kron", m, id=f"kron-{m[0]}-{m[1]}") for m in MODES]
    cases += [pytest.param("full", m, id=f"full-{m[0]}-{m[1]}") for m in MODES]
    cases += [pytest.param("diag", m, id=f"diag-{m[0]}") for m in DIAG_MODES]
    return cases


@pytest.mark.parametrize(("scheme", "mode"), _cases())
def test_iterates_match_numpy(xp, jit, scheme, mode, record_property):
    ref = _reference(scheme, mode)
    got = _run(xp, jit, scheme, mode)
    worst = 0.0
    for k, (a_rec, e_rec) in enumerate(zip(got, ref, strict=True)):
        for i, (a, e) in enumerate(zip(a_rec, e_rec, strict=True)):
            assert a.dtype == np.float64 and a.shape == e.shape
            assert np.all(np.isfinite(a))
            err = float(np.linalg.norm(a - e) / np.linalg.norm(e))
            worst = max(worst, err)
            assert err <= RTOL, f"step {k}, field {i}: relative error {err:.3e} vs numpy"
    record_property(f"worst_rel_err_{scheme}_{backend(xp)}", worst)
    # the run is non-trivial: the state moved away from its start
    first, last = ref[0], ref[-1]
    assert max(np.linalg.norm(a - b) for a, b in zip(first, last, strict=True)) > 1e-2
