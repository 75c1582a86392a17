"""Input validation: bad input raises a clear error naming the argument (eager backends),
and the value checks are skipped (no crash) under ``jax.jit``.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import BACKENDS, _load, asarray, backend, skip_marked_backends, to_numpy
from spectral_curv import diag, full

N = 4


@pytest.fixture(params=[b for b in BACKENDS if b != "jax"])
def exp_xp(request):
    """Eager backends only: jax arrays (even concrete ones) count as lazy, so their value
    checks are skipped (see ``test_value_checks_skipped_under_jit``)."""
    skip_marked_backends(request, request.param)
    return _load(request.param)


@pytest.fixture
def st(exp_xp):
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.standard_normal((N, N)))[0]
    return full.SpectralState(asarray(exp_xp, q), asarray(exp_xp, np.linspace(1.0, 2.0, N)))


@pytest.fixture
def dst(exp_xp):
    return diag.DiagState(asarray(exp_xp, np.linspace(1.0, 2.0, N)))


def _sym(xp, n=N, seed=1):
    a = np.random.default_rng(seed).standard_normal((n, n))
    return asarray(xp, a + a.T)


def _other_backend_array(xp, data):
    """The same data as an array of a different backend than ``xp``."""
    if backend(xp) == "numpy":
        try:
            other = _load("torch")
        except pytest.skip.Exception:
            other = _load("array_api_strict")
        return asarray(other, data)
    return np.asarray(data, dtype=np.float64)


# --------------------------------------------------------------------------- full: shapes


@pytest.mark.parametrize("gshape", [(N - 1,), (N + 1,), (2, N - 1), (2, 2, N), ()])
def test_full_g_wrong_shape(exp_xp, st, gshape):
    g = asarray(exp_xp, np.ones(gshape))
    with pytest.raises(ValueError, match="`g` must have shape"):
        full.update_gop(st, g, beta2=0.1)


@pytest.mark.parametrize("dshape", [(N, N - 1), (N - 1, N), (N + 1, N + 1), (N,), (1, N, N)])
def test_full_delta_wrong_shape(exp_xp, st, dshape):
    delta = asarray(exp_xp, np.ones(dshape))
    with pytest.raises(ValueError, match="`delta` must have shape"):
        full.update(st, delta, beta2=0.1)


def test_full_state_b_d_mismatch(exp_xp):
    bad = full.SpectralState(asarray(exp_xp, np.eye(N)), asarray(exp_xp, np.ones(N - 1)))
    with pytest.raises(ValueError, match=r"`state\.B` must have shape"):
        full.update_gop(bad, asarray(exp_xp, np.ones(N - 1)), beta2=0.1)
    with pytest.raises(ValueError, match=r"`state\.B` must have shape"):
        full.update(bad, asarray(exp_xp, np.eye(N - 1)), beta2=0.1)
    with pytest.raises(ValueError, match=r"`state\.B` must have shape"):
        full.precondition(bad, asarray(exp_xp, np.ones(N - 1)), p=2)


def test_full_precondition_v_wrong_shape(exp_xp, st):
    with pytest.raises(ValueError, match="`v` must have trailing dimension"):
        full.precondition(st, asarray(exp_xp, np.ones(N + 1)), p=2)
    with pytest.raises(ValueError, match="`v` must have trailing dimension"):
        full.precondition(st, asarray(exp_xp, np.ones((N, 2))), p=2)


def test_full_asymmetric_delta(exp_xp, st):
    a = np.random.default_rng(2).standard_normal((N, N))
    with pytest.raises(ValueError, match="`delta` must be symmetric"):
        full.update(st, asarray(exp_xp, a), beta2=0.1)
    # round-off asymmetry (as from a computed BᵀAB) is accepted
    sym = a + a.T
    sym[0, 1] += 1e-15
    full.update(st, asarray(exp_xp, sym), beta2=0.1)


# --------------------------------------------------------------------------- backends / devices


def test_full_mixed_backends(exp_xp, st):
    with pytest.raises(TypeError, match="`g` belongs to"):
        full.update_gop(st, _other_backend_array(exp_xp, np.ones(N)), beta2=0.1)
    with pytest.raises(TypeError, match="`delta` belongs to"):
        full.update(st, _other_backend_array(exp_xp, np.eye(N)), beta2=0.1)
    with pytest.raises(TypeError, match="`v` belongs to"):
        full.precondition(st, _other_backend_array(exp_xp, np.ones(N)), p=2)


def test_full_not_an_array(exp_xp, st):
    with pytest.raises(TypeError, match="`g` is not an array"):
        full.update_gop(st, [1.0] * N, beta2=0.1)


def test_diag_mixed_backends(exp_xp, dst):
    with pytest.raises(TypeError, match="`g` belongs to"):
        diag.update_gop(dst, _other_backend_array(exp_xp, np.ones(N)), beta2=0.1)
    with pytest.raises(TypeError, match="`delta` belongs to"):
        diag.update(dst, _other_backend_array(exp_xp, np.ones(N)), beta2=0.1)
    with pytest.raises(TypeError, match="`v` belongs to"):
        diag.precondition(dst, _other_backend_array(exp_xp, np.ones(N)), p=2)


def _other_device(xp):
    if backend(xp) == "array_api_strict":
        return xp.Device("device1")
    import torch

    return torch.device("meta")


@pytest.mark.skip_backends("numpy", "cupy", "jax", reason="no second device to test with")
def test_mismatched_devices(exp_xp, st, dst):
    dev = _other_device(exp_xp)
    g = exp_xp.asarray(np.ones(N), dtype=exp_xp.float64, device=dev)
    with pytest.raises(ValueError, match="`g` is on device"):
        full.update_gop(st, g, beta2=0.1)
    with pytest.raises(ValueError, match="`g` is on device"):
        diag.update_gop(dst, g, beta2=0.1)
    delta = exp_xp.asarray(np.eye(N), dtype=exp_xp.float64, device=dev)
    with pytest.raises(ValueError, match="`delta` is on device"):
        full.update(st, delta, beta2=0.1)


# --------------------------------------------------------------------------- values / dtypes


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(exp_xp, st, dst, bad):
    g = np.ones(N)
    g[1] = bad
    with pytest.raises(ValueError, match="`g` contains non-finite"):
        full.update_gop(st, asarray(exp_xp, g), beta2=0.1)
    with pytest.raises(ValueError, match="`g` contains non-finite"):
        full.update_gop(st, asarray(exp_xp, np.stack([np.ones(N), g])), beta2=0.1)
    with pytest.raises(ValueError, match="`g` contains non-finite"):
        diag.update_gop(dst, asarray(exp_xp, g), beta2=0.1)
    delta = np.eye(N)
    delta[2, 2] = bad
    with pytest.raises(ValueError, match="`delta` contains non-finite"):
        full.update(st, asarray(exp_xp, delta), beta2=0.1)
    with pytest.raises(ValueError, match="`delta` contains non-finite"):
        diag.update(dst, asarray(exp_xp, g), beta2=0.1)


def test_integer_dtype(exp_xp, st, dst):
    gi = exp_xp.asarray(np.ones(N, dtype=np.int64), dtype=exp_xp.int64)
    with pytest.raises(TypeError, match="`g` must have a real floating dtype"):
        full.update_gop(st, gi, beta2=0.1)
    with pytest.raises(TypeError, match="`g` must have a real floating dtype"):
        diag.update_gop(dst, gi, beta2=0.1)
    di = exp_xp.asarray(np.eye(N, dtype=np.int64), dtype=exp_xp.int64)
    with pytest.raises(TypeError, match="`delta` must have a real floating dtype"):
        full.update(st, di, beta2=0.1)
    with pytest.raises(TypeError, match="`delta` must have a real floating dtype"):
        diag.update(dst, gi, beta2=0.1)
    gb = exp_xp.asarray(np.ones(N, dtype=bool))
    with pytest.raises(TypeError, match="`g` must have a real floating dtype"):
        full.update_gop(st, gb, beta2=0.1)


# --------------------------------------------------------------------------- hyperparameters


@pytest.mark.parametrize("p", [0, -1.0, 0.0, np.nan, np.inf])
def test_bad_p(exp_xp, st, dst, p):
    v = asarray(exp_xp, np.ones(N))
    with pytest.raises(ValueError, match="`p` must be finite and > 0"):
        full.precondition(st, v, p=p)
    with pytest.raises(ValueError, match="`p` must be finite and > 0"):
        diag.precondition(dst, v, p=p)


@pytest.mark.parametrize("beta2", [0, 0.0, -0.1, np.nan, np.inf])
def test_bad_beta2(exp_xp, st, dst, beta2):
    g = asarray(exp_xp, np.ones(N))
    with pytest.raises(ValueError, match="`beta2` must be finite and > 0"):
        full.update_gop(st, g, beta2=beta2)
    with pytest.raises(ValueError, match="`beta2` must be finite and > 0"):
        full.update(st, _sym(exp_xp), beta2=beta2)
    with pytest.raises(ValueError, match="`beta2` must be finite and > 0"):
        diag.update_gop(dst, g, beta2=beta2)
    with pytest.raises(ValueError, match="`beta2` must be finite and > 0"):
        diag.update(dst, g, beta2=beta2)


@pytest.mark.parametrize("name", ["gamma", "damping"])
def test_negative_gamma_damping(exp_xp, st, dst, name):
    g = asarray(exp_xp, np.ones(N))
    kw = {name: -0.5}
    with pytest.raises(ValueError, match=f"`{name}` must be finite and >= 0"):
        full.update_gop(st, g, beta2=0.1, **kw)
    with pytest.raises(ValueError, match=f"`{name}` must be finite and >= 0"):
        diag.update_gop(dst, g, beta2=0.1, **kw)
    # zero is allowed
    full.update_gop(st, g, beta2=0.1, **{name: 0.0})


def test_unknown_modes(exp_xp, st, dst):
    g = asarray(exp_xp, np.ones(N))
    with pytest.raises(ValueError, match="`cayley` must be one of"):
        full.update_gop(st, g, beta2=0.1, cayley="pade")
    with pytest.raises(ValueError, match="`cayley` must be one of"):
        full.update(st, _sym(exp_xp), beta2=0.1, cayley="Exact")
    with pytest.raises(ValueError, match="`exp` must be one of"):
        full.update_gop(st, g, beta2=0.1, exp="second_order")
    with pytest.raises(ValueError, match="`exp` must be one of"):
        diag.update_gop(dst, g, beta2=0.1, exp="truncated")
    with pytest.raises(ValueError, match="`exp` must be one of"):
        diag.update(dst, g, beta2=0.1, exp="")


@pytest.mark.parametrize("terms", [-1, 1.5, 2.0, True, "2", None])
def test_bad_cayley_terms(exp_xp, st, terms):
    g = asarray(exp_xp, np.ones(N))
    with pytest.raises(ValueError, match="`cayley_terms` must be an int >= 0"):
        full.update_gop(st, g, beta2=0.1, cayley="neumann", cayley_terms=terms)
    with pytest.raises(ValueError, match="`cayley_terms` must be an int >= 0"):
        full.update(st, _sym(exp_xp), beta2=0.1, cayley="neumann", cayley_terms=terms)


def test_bad_tie_tol_and_max_step_norm(exp_xp, st):
    g = asarray(exp_xp, np.ones(N))
    with pytest.raises(ValueError, match="`tie_tol` must be finite and >= 0"):
        full.update_gop(st, g, beta2=0.1, tie_tol=-1e-3)
    for msn in (0.0, -0.25, np.inf):
        with pytest.raises(ValueError, match="`max_step_norm` must be finite and > 0"):
            full.update_gop(st, g, beta2=0.1, max_step_norm=msn)


# --------------------------------------------------------------------------- init / from_dense


@pytest.mark.parametrize("n", [0, -3, 2.0, "3", None, True])
def test_full_init_bad_n(n):
    with pytest.raises(ValueError, match="`n` must be a positive int"):
        full.init(n)


@pytest.mark.parametrize("scale", [0, 0.0, -1.0, np.nan, np.inf])
def test_init_bad_scale(exp_xp, scale):
    with pytest.raises(ValueError, match="`scale` must be finite and > 0"):
        full.init(3, scale=scale, xp=exp_xp)
    with pytest.raises(ValueError, match="`scale` must be finite and > 0"):
        diag.init(3, scale=scale, xp=exp_xp)


@pytest.mark.parametrize("shape", [-1, (2, -1), (2.0, 3), ("a",), True, (2, False)])
def test_diag_init_bad_shape(shape):
    with pytest.raises(ValueError, match="`shape` must hold non-negative ints"):
        diag.init(shape)


def test_from_dense_bad_input(exp_xp):
    with pytest.raises(ValueError, match="`s` must be a square matrix"):
        full.from_dense(asarray(exp_xp, np.ones((3, 4))))
    with pytest.raises(ValueError, match="`s` must be a square matrix"):
        full.from_dense(asarray(exp_xp, np.ones(3)))
    with pytest.raises(ValueError, match="`s` is not positive definite"):
        full.from_dense(asarray(exp_xp, np.diag([1.0, -1.0, 2.0])))


def test_diag_wrong_shapes(exp_xp, dst):
    with pytest.raises(ValueError, match="`g` must have shape"):
        diag.update_gop(dst, asarray(exp_xp, np.ones(N + 1)), beta2=0.1)
    with pytest.raises(ValueError, match="`g` must have shape"):
        diag.update_gop(dst, asarray(exp_xp, np.ones((2, 2, N))), beta2=0.1)
    with pytest.raises(ValueError, match="`delta` must have shape"):
        diag.update(dst, asarray(exp_xp, np.ones((2, N))), beta2=0.1)
    with pytest.raises(ValueError, match="`v` must end with shape"):
        diag.precondition(dst, asarray(exp_xp, np.ones(N + 1)), p=2)


# --------------------------------------------------------------------------- under jax.jit


def test_value_checks_skipped_under_jit():
    """Traced values cannot be inspected: NaN, asymmetry, non-PD pass through silently;
    static checks (shapes, dtypes, Python hyperparameters) still raise at trace time."""
    jax = pytest.importorskip("jax")
    xp = _load("jax")
    st = full.init(N, xp=xp)
    st = full.SpectralState(st.B, asarray(xp, np.linspace(1.0, 2.0, N)))
    g_nan = asarray(xp, [1.0, np.nan, 2.0, 3.0])
    out = jax.jit(lambda s, g: full.update_gop(s, g, beta2=0.1))(st, g_nan)
    assert np.isnan(to_numpy(out.d)).any()
    a = np.random.default_rng(3).standard_normal((N, N))
    out = jax.jit(lambda s, dl: full.update(s, dl, beta2=0.1))(st, asarray(xp, a))
    assert np.all(np.isfinite(to_numpy(out.d)))
    bad_s = asarray(xp, np.diag([1.0, -1.0, 2.0]))
    out = jax.jit(full.from_dense)(bad_s)
    assert to_numpy(out.d).min() < 0
    dst = diag.init(N, xp=xp)
    out = jax.jit(lambda s, g: diag.update_gop(s, g, beta2=0.1))(dst, g_nan)
    assert np.isnan(to_numpy(out.d)).any()
    # static checks still apply while tracing
    with pytest.raises(ValueError, match="`g` must have shape"):
        jax.jit(lambda s, g: full.update_gop(s, g, beta2=0.1))(st, asarray(xp, np.ones(N + 1)))
    with pytest.raises(ValueError, match="`beta2` must be finite and > 0"):
        jax.jit(lambda s, g: full.update_gop(s, g, beta2=-1.0))(st, asarray(xp, np.ones(N)))
    with pytest.raises(TypeError, match="`g` must have a real floating dtype"):
        jax.jit(lambda s, g: diag.update_gop(s, g, beta2=0.1))(dst, xp.ones(N, dtype=xp.int32))
