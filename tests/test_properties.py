"""Property-based tests (hypothesis) of the optimizer step: the core engine
(``optim.precondition_step``) and the torch, NumPy and optax adapters.

Random parameter shapes (0-d … 4-D, size-1 and empty dimensions, wide and tall), dtypes
(float32/float64), gradient scales (1e-30 … 1e30), option combinations (``p``, Cayley mode,
grafting, RMS clipping, refresh interval, momentum, a diagonal side) and non-finite gradients
injected on some steps. The invariant of every step:

- either a *named* error: a ValueError/TypeError whose message names an option (```name```)
  or says NaN/inf;
- or a finite step whose state is still valid (``optim.check_precond``: orthogonal ``B``,
  ``d > 0``, ``Π d = 1``), and on a skipped step (``nonfinite="skip"``) the parameters and the
  state are exactly unchanged (``"raise"``: the same, plus the error).

Example counts come from the hypothesis profile registered in ``tests/conftest.py``:
``ci`` (the default: 25 examples per test, derandomized, no deadline; the optax test runs a
fifth of them, each compiles a step; the NumPy, torch and core tests 4×) and ``nightly``
(1000 examples)::

    pytest tests/test_properties.py                                  # ci, ~12 s on one core
    pytest tests/test_properties.py --hypothesis-profile=nightly     # nightly

A failure prints the minimal example and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from spectral_curv import diag, kron, maps, optim  # noqa: E402

NAMED = re.compile(r"`\w+`|NaN|inf")

# keep-last-good rejections are expected here (1e30 gradients in float32 …)
pytestmark = pytest.mark.filterwarnings("ignore:a preconditioner refresh was rejected")

#: the cheap tests (NumPy, torch, the core) run 4× the profile's examples
CHEAP = settings(max_examples=4 * settings().max_examples)

# --------------------------------------------------------------------------- strategies
#: dimensions: mostly small, some 1 (dropped by the routing) and some 0 (empty parameters)
dims = st.one_of(st.integers(2, 6), st.just(1), st.just(0))
shapes = st.lists(dims, min_size=0, max_size=4).map(tuple)
wide_or_tall = st.sampled_from([(1, 7), (7, 1), (2, 9), (9, 2), (6, 3, 1, 2)])
any_shape = st.one_of(shapes, wide_or_tall)
scales = st.sampled_from([1e-30, 1e-10, 1e-3, 1.0, 1e3, 1e10, 1e30])


@st.composite
def option_sets(draw: Any) -> dict[str, Any]:
    """Valid options (``optim.Options`` names), now and then one invalid value."""
    o: dict[str, Any] = {
        "lr": draw(st.sampled_from([1e-3, 0.1])),
        "p": draw(st.sampled_from([0.5, 1.0, 2.0, 4.0])),
        "cayley": draw(st.sampled_from(maps.CAYLEY_MODES)),
        "exp": draw(st.sampled_from(maps.EXP_MODES)),
        "graft": draw(st.sampled_from([None, "adam"])),
        "max_update_rms": draw(st.sampled_from([None, 0.1, 10.0])),
        "update_interval": draw(st.integers(1, 3)),
        "precond_warmup": draw(st.sampled_from([0, 2, 10])),
        "reorth_interval": draw(st.sampled_from([0, 1, 3])),
        "momentum": draw(st.sampled_from([0.0, 0.5, 0.9])),
        "damping": draw(st.sampled_from([0.0, 1e-8, 1e-3])),
        "weight_decay": draw(st.sampled_from([0.0, 0.01])),
        "max_precond_dim": draw(st.sampled_from([3, 4096])),  # 3: a diagonal side
        "nonfinite": draw(st.sampled_from(["raise", "skip"])),
    }
    if o["cayley"] == "neumann":
        o["cayley_terms"] = draw(st.integers(1, 3))
    if draw(st.integers(0, 9)) == 0:  # one invalid value: must raise naming it
        name, value = draw(
            st.sampled_from(
                [
                    ("p", 0.0),
                    ("p", -1.0),
                    ("lr", float("nan")),
                    ("momentum", 1.0),
                    ("update_interval", 0),
                    ("precond_lr", float("inf")),
                    ("cayley", "bogus"),
                    ("max_update_rms", -1.0),
                ]
            )
        )
        o[name] = value
    return o


@st.composite
def problems(draw: Any, max_params: int = 3) -> dict[str, Any]:
    n = draw(st.integers(1, max_params))
    return {
        "shapes": [draw(any_shape) for _ in range(n)],
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "options": draw(option_sets()),
        "scale": draw(scales),
        "seed": draw(st.integers(0, 2**16)),
        # steps with a NaN/inf entry in one gradient (step index → value)
        "bad": draw(
            st.dictionaries(
                st.integers(0, 3), st.sampled_from([np.nan, np.inf, -np.inf]), max_size=2
            )
        ),
        "steps": 4,
    }


def _gradients(pb: dict[str, Any]) -> list[list[np.ndarray]]:
    """Per step, per parameter: ``scale × N(0, 1)`` in the parameter's dtype, with the
    injected non-finite entries (in the first non-empty parameter)."""
    rng = np.random.default_rng(pb["seed"])
    out = []
    target = next((i for i, s in enumerate(pb["shapes"]) if math.prod(s) > 0), None)
    for t in range(pb["steps"]):
        gs = []
        for s in pb["shapes"]:
            with np.errstate(over="ignore"):
                gs.append(np.asarray(pb["scale"] * rng.standard_normal(s), dtype=pb["dtype"]))
        if t in pb["bad"] and target is not None:
            gs[target].reshape(-1)[0] = pb["bad"][t]
        out.append(gs)
    return out


# --------------------------------------------------------------------------- found bugs
# Minimal failing examples these properties found, kept as regression tests.


@pytest.mark.parametrize("adapter", ["numpy", "torch", "core"])
def test_empty_parameter_with_p_not_2(adapter):
    """An empty parameter with ``p ≠ 2`` once crashed ``maps.match_norm`` (a minimum over an
    empty axis); it is a no-op step now."""
    P = [np.zeros((0, 3))]
    if adapter == "numpy":
        from spectral_curv.numpy import SpectralKron

        out = SpectralKron(P, p=0.5).step(P, P)
        assert out[0].shape == (0, 3)
    elif adapter == "torch":
        torch = pytest.importorskip("torch")
        from spectral_curv.torch import SpectralKron as TorchSpectralKron

        w = torch.nn.Parameter(torch.zeros(0, 3))
        w.grad = torch.zeros(0, 3)
        TorchSpectralKron([w], p=0.5).step()
    else:
        st = optim.init(optim.plan((0,)), (0,))
        _, _, us = optim.precondition_step(
            [st],
            [np.zeros(0)],
            first=True,
            refresh=True,
            reorth=False,
            options=optim.Options(p=0.5),
        )
        assert us[0].shape == (0,)


def _named(e: BaseException) -> bool:
    return isinstance(e, (ValueError, TypeError)) and bool(NAMED.search(str(e)))


def _check_state(pre: optim.Precond, shape: tuple[int, ...], options: dict[str, Any]) -> None:
    pl = optim.plan(shape, options.get("max_precond_dim", optim.DEFAULT_MAX_PRECOND_DIM))
    optim.check_precond(pre, pl, optim.matrix_shape(pl, shape))


def _finite(x: Any) -> bool:
    return bool(np.isfinite(np.asarray(x, dtype=np.float64)).all())


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- adapters
class _Run:
    """An adapter under test: built from a problem (may raise a named error), ``step``,
    ``params``, ``preconds`` (per parameter), ``skipped``, ``frozen`` (parameters and the
    whole state but the skip counter, for equality)."""

    raise_errors: tuple[type[BaseException], ...] = (ValueError,)


class _TorchRun(_Run):
    def __init__(self, pb: dict[str, Any]) -> None:
        import torch

        from spectral_curv.torch import SpectralKron

        self.torch = torch
        dt = getattr(torch, pb["dtype"])
        rng = np.random.default_rng(pb["seed"] + 1)
        self.ps = [
            torch.nn.Parameter(torch.tensor(rng.standard_normal(s), dtype=dt)) for s in pb["shapes"]
        ]
        self.opt = SpectralKron(self.ps, **pb["options"])

    def step(self, grads: list[np.ndarray]) -> None:
        for p, g in zip(self.ps, grads):
            p.grad = self.torch.from_numpy(g.copy())
        self.opt.step()

    def params(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self.ps]

    def preconds(self) -> list[optim.Precond]:
        out = []
        for p in self.ps:
            s = self.opt.state[p]
            if "d" in s:
                out.append(diag.DiagState(s["d"]))
            else:
                out.append(kron.KronState(*(s.get(f) for f in kron.KronState._fields)))
        return out

    def skipped(self) -> int:
        return self.opt.skipped_steps

    def frozen(self) -> list[np.ndarray]:
        out = self.params()
        for p in self.ps:
            out += [v.numpy().copy() for _, v in sorted(self.opt.state[p].items())]
        return out


class _NumpyRun(_Run):
    def __init__(self, pb: dict[str, Any]) -> None:
        from spectral_curv.numpy import SpectralKron

        rng = np.random.default_rng(pb["seed"] + 1)
        self.P = [np.asarray(rng.standard_normal(s), dtype=pb["dtype"]) for s in pb["shapes"]]
        self.opt = SpectralKron(self.P, **pb["options"])

    def step(self, grads: list[np.ndarray]) -> None:
        self.P = self.opt.step(self.P, grads)

    def params(self) -> list[np.ndarray]:
        return [np.array(p) for p in self.P]

    def preconds(self) -> list[optim.Precond]:
        out = []
        for s in self.opt.state:
            if "d" in s:
                out.append(diag.DiagState(s["d"]))
            else:
                out.append(kron.KronState(*(s.get(f) for f in kron.KronState._fields)))
        return out

    def skipped(self) -> int:
        return self.opt.skipped_steps

    def frozen(self) -> list[np.ndarray]:
        out = self.params()
        for s in self.opt.state:
            out += [np.asarray(v) for _, v in sorted(s.items())]
        return out


class _OptaxRun(_Run):
    def __init__(self, pb: dict[str, Any]) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        from spectral_curv.optax import ScaleBySpectralKronState, spectral_kron

        jax.config.update("jax_enable_x64", True)
        self.jax, self.jnp, self.optax = jax, jnp, optax
        self.raise_errors = (ValueError, jax.errors.JaxRuntimeError)
        rng = np.random.default_rng(pb["seed"] + 1)
        self.p = {
            f"p{i}": jnp.asarray(rng.standard_normal(s), dtype=pb["dtype"])
            for i, s in enumerate(pb["shapes"])
        }
        o = dict(pb["options"])
        self.tx = spectral_kron(o.pop("lr"), **o)
        self.state = self.tx.init(self.p)
        self.update = jax.jit(self.tx.update)
        self._own_t = ScaleBySpectralKronState

    def step(self, grads: list[np.ndarray]) -> None:
        g = {f"p{i}": self.jnp.asarray(x) for i, x in enumerate(grads)}
        u, s = self.update(g, self.state, self.p)
        self.jax.block_until_ready((u, s))
        self.p, self.state = self.optax.apply_updates(self.p, u), s

    def params(self) -> list[np.ndarray]:
        return [np.array(self.p[f"p{i}"]) for i in range(len(self.p))]

    def _own(self) -> Any:
        is_own = lambda x: isinstance(x, self._own_t)  # noqa: E731
        return next(s for s in self.jax.tree.leaves(self.state, is_leaf=is_own) if is_own(s))

    def preconds(self) -> list[optim.Precond]:
        return [self._own().precond[f"p{i}"] for i in range(len(self.p))]

    def skipped(self) -> int:
        return int(self._own().skipped)

    def frozen(self) -> list[np.ndarray]:
        own_t = self._own_t
        st_ = self.jax.tree.map(
            lambda x: x._replace(skipped=None) if isinstance(x, own_t) else x,
            self.state,
            is_leaf=lambda x: isinstance(x, own_t),
        )
        return self.params() + [np.array(x) for x in self.jax.tree.leaves(st_)]


RUNS = {"torch": _TorchRun, "numpy": _NumpyRun, "optax": _OptaxRun}
_FRAMEWORK = {"torch": ("torch",), "numpy": (), "optax": ("jax", "optax")}


def check_adapter(name: str, pb: dict[str, Any]) -> None:
    """The invariant of the module docstring, step by step."""
    note(f"{name}: {pb}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run = RUNS[name](pb)
    except (ValueError, TypeError) as e:
        assert _named(e), f"unnamed error at construction: {e!r}"
        return
    for t, grads in enumerate(_gradients(pb)):
        finite = all(np.isfinite(g).all() for g in grads)
        before, skipped = run.frozen(), run.skipped()
        if not finite and pb["options"]["nonfinite"] == "raise":
            with pytest.raises(run.raise_errors, match="NaN or inf"):
                run.step(grads)
            assert _same(run.frozen(), before), f"step {t}: a raise changed state"
            continue
        try:
            run.step(grads)
        except (ValueError, TypeError) as e:
            assert _named(e), f"step {t}: unnamed error {e!r}"
            return
        if not finite:
            assert run.skipped() == skipped + 1, f"step {t}: skip not counted"
            assert _same(run.frozen(), before), f"step {t}: a skip changed state"
            continue
        assert run.skipped() == skipped
        for i, (p, pre) in enumerate(zip(run.params(), run.preconds())):
            assert p.dtype == np.dtype(pb["dtype"]), (t, i, p.dtype)
            assert _finite(p), f"step {t}: parameter {i} {pb['shapes'][i]} is not finite"
            _check_state(pre, pb["shapes"][i], pb["options"])


def _need(name: str) -> None:
    for mod in _FRAMEWORK[name]:
        pytest.importorskip(mod)


# --------------------------------------------------------------------------- the tests
@CHEAP
@given(pb=problems())
def test_numpy_adapter_invariant(pb):
    with np.errstate(all="ignore"):
        check_adapter("numpy", pb)


@CHEAP
@given(pb=problems())
def test_torch_adapter_invariant(pb):
    _need("torch")
    check_adapter("torch", pb)


@pytest.mark.slow  # a jit compilation per example
@settings(max_examples=max(3, settings().max_examples // 5))
@given(pb=problems(max_params=2))
def test_optax_adapter_invariant(pb):
    _need("optax")
    check_adapter("optax", pb)


@CHEAP
@given(
    shape=any_shape,
    batch=st.integers(1, 3),
    dtype=st.sampled_from([np.float32, np.float64]),
    options=option_sets(),
    scale=scales,
    bad=st.sampled_from([None, np.nan, np.inf]),
    seed=st.integers(0, 2**16),
)
def test_core_precondition_step_invariant(shape, batch, dtype, options, scale, bad, seed):
    """``optim.precondition_step`` on stacked (Kronecker) or single (diagonal) states over a
    few scheduled steps: valid options give valid states and finite directions for finite
    gradients; a non-finite gradient leaves the factors as they were (``ok`` False) after
    the first step, and valid ones on the first."""
    try:
        o = optim.Options(**options)
    except (ValueError, TypeError) as e:
        assert _named(e), repr(e)
        return
    pl = optim.plan(shape, o.max_precond_dim)
    mshape = optim.matrix_shape(pl, shape)
    b = (batch,) if pl.kind == "kron" else ()
    stt = optim.init(pl, mshape, batch=b, dtype=dtype)
    rng = np.random.default_rng(seed)
    refreshes = 0
    with np.errstate(all="ignore"):
        for t in range(4):
            g = np.asarray(scale * rng.standard_normal((*b, *mshape)), dtype=dtype)
            if bad is not None and t == 2 and g.size:
                g.reshape(-1)[0] = bad
            first, refresh, reorth = optim.schedule(
                t,
                refreshes,
                update_interval=o.update_interval,
                precond_warmup=o.precond_warmup,
                reorth_interval=o.reorth_interval,
                cayley=o.cayley,
            )
            (new,), (ok,), (u,) = optim.precondition_step(
                [stt], [g], first=first, refresh=refresh, reorth=reorth, options=o
            )
            refreshes += int(refresh)
            finite = bool(np.isfinite(g).all())
            for i in range(batch if b else 1):
                layer = type(new)(*(None if x is None else (x[i] if b else x) for x in new))
                optim.check_precond(layer, pl, mshape)
            if finite:
                assert np.isfinite(u).all(), f"step {t}: direction not finite"
                assert u.dtype == dtype and u.shape == g.shape
            elif refresh and not first and not reorth:  # layer 0 holds the bad entry
                assert not bool(np.asarray(ok).reshape(-1)[0]), f"step {t}: accepted"
                for x, y in zip(new, stt):
                    if x is not None:
                        x0, y0 = (x[0], y[0]) if b else (x, y)
                        assert np.array_equal(x0, y0), f"step {t}: a rejected refresh moved"
            stt = new


# ------------------------------------------------------------------- SPD geodesic step
@CHEAP
@given(
    n=st.integers(1, 7),
    cond=st.sampled_from([1.0, 10.0, 1e3, 1e6]),
    scale=st.sampled_from([1e-10, 1e-3, 1.0, 1e3, 1e10]),
    step=st.floats(1e-3, 2.0),
    sweeps=st.sampled_from([1, 3, 40]),
    seed=st.integers(0, 2**31 - 1),
)
def test_spd_geodesic_step_invariant(n, cond, scale, step, sweeps, seed):
    """``spd.step`` (default: the geodesic step, math §2.5) from a random SPD ``S`` (any
    scale, condition up to 1e6, ties when ``cond = 1``) and a random symmetric gradient whose
    natural step ``‖lr·S^{1/2}GS^{1/2}‖₂`` is ``step``: ``B`` orthogonal, ``d > 0`` and finite;
    scale-equivariant (``S → cS``, ``G → G/c``: ``S' → cS'``); with 40 sweeps, the RGD-expm
    step (eigh reference)."""
    from spectral_curv import full, spd

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    w = scale * np.geomspace(1.0, cond, n)
    s = (q * w) @ q.T
    s = 0.5 * (s + s.T)
    a = rng.standard_normal((n, n))
    g = 0.5 * (a + a.T)
    r = (q * np.sqrt(w)) @ q.T
    nat = np.linalg.norm(r @ g @ r, 2)
    if nat == 0.0:
        return
    lr = step / (2.0 * nat)
    st0 = full.SpectralState(q, w)
    new = spd.step(st0, g, lr=lr, sweeps=sweeps)
    note(f"d={new.d}")
    assert np.all(np.isfinite(new.B)) and np.all(np.isfinite(new.d)) and np.all(new.d > 0)
    assert np.abs(new.B.T @ new.B - np.eye(n)).max() < 1e-12
    c = 7.0
    scaled = spd.step(full.SpectralState(q, c * w), g / c, lr=lr, sweeps=sweeps)
    np.testing.assert_allclose(
        full.dense(scaled),
        c * full.dense(new),
        rtol=1e-9,
        atol=1e-9 * c * np.abs(full.dense(new)).max(),
    )
    if sweeps == 40:
        e, v = np.linalg.eigh(-2.0 * lr * r @ g @ r)
        ref = r @ ((v * np.exp(e)) @ v.T) @ r
        np.testing.assert_allclose(full.dense(new), ref, rtol=0, atol=1e-9 * np.abs(ref).max())
