"""The optimizer contract: what every adapter (torch, NumPy, optax) promises, checked on all
three through one small driver class per adapter.

a. the same float64 trajectory (torch vs NumPy vs optax under ``jax.jit``) to 1e-10 for each
   configuration of ``tests/_configs.py``, on a matrix, two same-shaped matrices (a stacked
   refresh), a square matrix, a conv-shaped 4-D weight, a vector and a scalar;
b. every bad hyperparameter raises a ValueError naming it;
c. the deprecated ``betas``/``eps`` warn and give the numbers of ``graft_betas``/``graft_eps``;
d. a non-finite gradient: ``"raise"`` raises and changes nothing; ``"skip"`` changes nothing,
   counts the skip, and the run continues as if the bad step never happened;
e. a checkpoint (``torch.save``/``torch.load(weights_only=True)``; ``np.savez`` + json;
   ``np.savez`` of optax's state leaves) resumes bit for bit;
f. a corrupted checkpoint is rejected with a ValueError naming the field, changing nothing;
g. float16 (and bf16) parameters keep their factors in float32 by default;
h. torch's ``Optimizer`` conventions: deepcopy/pickle, load_state_dict hooks, extra keys.

Adapters whose framework is not installed are skipped.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from _configs import CONFIGS
from conftest import xp_assert_close, xp_assert_equal
from spectral_curv import optim

ADAPTERS = ("torch", "numpy", "optax")
RTOL = 1e-10  # trajectory agreement across adapters (float64)
STEPS = 24

#: A 3 × 4 matrix and its twin (stacked into one refresh), a 4 × 4 matrix, a conv weight
#: (3 × 12 after flattening: with ``max_precond_dim=10`` its column side is diagonal), a
#: vector and a scalar.
SHAPES: dict[str, tuple[int, ...]] = {
    "w": (3, 4),
    "w2": (3, 4),
    "sq": (4, 4),
    "conv": (3, 3, 2, 2),
    "v": (4,),
    "s": (),
}


def _init(dtype: Any = np.float64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: np.asarray(0.5 * rng.standard_normal(s), dtype=dtype) for k, s in SHAPES.items()}


_TARGET = {k: np.random.default_rng(1).standard_normal(s) for k, s in SHAPES.items()}


def _grads(P: dict[str, np.ndarray], t: int) -> dict[str, np.ndarray]:
    """Gradient at ``P`` on step ``t``: a pull towards a target plus step-dependent noise
    (so the factors see changing curvature and the parameters feed back into the run)."""
    rng = np.random.default_rng(100 + t)
    out = {}
    for k in SHAPES:  # a fixed order of draws (a jax dict comes back with sorted keys)
        p = P[k]
        g = np.tanh(p.astype(np.float64) - _TARGET[k]) + 0.5 * rng.standard_normal(p.shape)
        out[k] = np.asarray(g, dtype=p.dtype)
    return out


# --------------------------------------------------------------------------- drivers
class Driver:
    """One adapter behind a common face. ``options`` are ``optim.Options`` names with
    ``precond_dtype`` spelled as a string ("float64", …)."""

    name = ""
    #: what a non-finite gradient with ``nonfinite="raise"`` raises
    raise_errors: tuple[type[BaseException], ...] = (ValueError,)

    def __init__(self, params: dict[str, np.ndarray], **options: Any) -> None:
        raise NotImplementedError

    def step(self, grads: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    @property
    def params(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def skipped(self) -> int:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        """Parameters and the whole optimizer state as NumPy arrays, without the skip
        counter (for bitwise comparisons)."""
        raise NotImplementedError

    def factors(self) -> dict[str, dict[str, np.ndarray]]:
        """Per parameter, the preconditioner's fields (and graft moments) as the adapter
        stores them (tensors / arrays: their dtype is what is checked)."""
        raise NotImplementedError

    def save(self, path: Any) -> None:
        raise NotImplementedError

    def load(self, path: Any) -> None:
        raise NotImplementedError

    def run(self, steps: range, bad: dict[int, float] | None = None) -> None:
        """Steps ``steps`` with :func:`_grads` at the current parameters (``bad[t]`` put
        into ``w``'s gradient on step ``t``)."""
        for t in steps:
            g = _grads(self.params, t)
            if bad and t in bad:
                g["w"][1, 2] = bad[t]
            self.step(g)


def _torch_dtype(name: Any) -> Any:
    import torch

    return None if name is None else getattr(torch, name)


class TorchDriver(Driver):
    name = "torch"

    def __init__(self, params: dict[str, np.ndarray], **options: Any) -> None:
        import torch

        from spectral_curv.torch import SpectralKron

        self.torch = torch
        opts = dict(options)
        if "precond_dtype" in opts:
            opts["precond_dtype"] = _torch_dtype(opts["precond_dtype"])
        self.names = list(params)
        self.p = {k: torch.nn.Parameter(torch.from_numpy(np.array(v))) for k, v in params.items()}
        self.opt = SpectralKron(list(self.p.values()), **opts)

    def step(self, grads: dict[str, np.ndarray]) -> None:
        for k, v in self.p.items():
            v.grad = self.torch.from_numpy(np.array(grads[k]))
        self.opt.step()

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {k: _np(v) for k, v in self.p.items()}

    @property
    def skipped(self) -> int:
        return self.opt.skipped_steps

    def snapshot(self) -> dict[str, Any]:
        sd = self.opt.state_dict()
        groups = [{k: v for k, v in g.items() if k != "skipped_steps"} for g in sd["param_groups"]]
        return {"params": self.params, "state": _tree_np(sd["state"]), "groups": groups}

    def factors(self) -> dict[str, dict[str, np.ndarray]]:
        keep = ("alpha", "B_C", "d_C", "B_K", "d_K", "d", "exp_avg", "exp_avg_sq")
        return {
            k: {f: v for f, v in self.opt.state[p].items() if f in keep} for k, p in self.p.items()
        }

    def save(self, path: Any) -> None:
        self.torch.save(
            {
                "params": {k: v.detach().clone() for k, v in self.p.items()},
                "opt": self.state_dict(),
            },
            path / "ckpt.pt",
        )

    def load(self, path: Any) -> None:
        ck = self.torch.load(path / "ckpt.pt", weights_only=True)
        with self.torch.no_grad():
            for k, v in self.p.items():
                v.copy_(ck["params"][k])
        self.load_state_dict(ck["opt"])

    # checkpoint surgery (contract f)
    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.opt.load_state_dict(sd)

    def entry(self, sd: dict[str, Any], name: str) -> dict[str, Any]:
        return sd["state"][self.names.index(name)]

    def as_array(self, value: np.ndarray, like: Any) -> Any:
        return self.torch.from_numpy(np.array(value)).to(like.dtype)

    def as_int(self, value: int) -> Any:
        return int(value)  # a Python int (old checkpoints): must load


class NumpyDriver(Driver):
    name = "numpy"

    def __init__(self, params: dict[str, np.ndarray], **options: Any) -> None:
        from spectral_curv.numpy import SpectralKron

        opts = dict(options)
        if opts.get("precond_dtype") is not None:
            opts["precond_dtype"] = np.dtype(opts["precond_dtype"])
        self.P = {k: np.array(v) for k, v in params.items()}
        self.opt = SpectralKron(self.P, **opts)

    def step(self, grads: dict[str, np.ndarray]) -> None:
        self.P = self.opt.step(self.P, grads)

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.P.items()}

    @property
    def skipped(self) -> int:
        return self.opt.skipped_steps

    def snapshot(self) -> dict[str, Any]:
        sd = self.opt.state_dict()
        sd.pop("skipped_steps")
        return {"params": self.params, "state": sd}

    def factors(self) -> dict[str, dict[str, np.ndarray]]:
        skip = ("step", "refreshes", "rejected", "momentum_buffer")
        return {
            k: {f: v for f, v in st.items() if f not in skip} for k, st in self.opt.state.items()
        }

    def save(self, path: Any) -> None:
        _savez_json({"params": self.params, "opt": self.opt.state_dict()}, path)

    def load(self, path: Any) -> None:
        ck = _loadz_json(path)
        self.P = ck["params"]
        self.opt.load_state_dict(ck["opt"])

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.opt.load_state_dict(sd)

    def entry(self, sd: dict[str, Any], name: str) -> dict[str, Any]:
        return sd["state"][list(SHAPES).index(name)]

    def as_array(self, value: np.ndarray, like: Any) -> Any:
        return np.asarray(value, dtype=like.dtype)

    def as_int(self, value: int) -> Any:
        return np.asarray(value, dtype=np.int64)  # a 0-d array, as np.savez stores one


#: jitted ``update`` functions by (options, parameter structure): drivers with equal
#: options share one compilation.
_JITTED: dict[str, Callable[..., Any]] = {}


class OptaxDriver(Driver):
    name = "optax"

    def __init__(self, params: dict[str, np.ndarray], **options: Any) -> None:
        import jax
        import jax.errors
        import jax.numpy as jnp

        from spectral_curv.optax import spectral_kron

        jax.config.update("jax_enable_x64", True)
        self.jax, self.jnp = jax, jnp
        self.raise_errors = (ValueError, jax.errors.JaxRuntimeError)
        opts = dict(options)
        if opts.get("precond_dtype") is not None:
            opts["precond_dtype"] = jnp.dtype(opts["precond_dtype"])
        lr = opts.pop("lr", optim.Options().lr)
        self.tx = spectral_kron(lr, **opts)
        self.p = {k: jnp.asarray(v) for k, v in params.items()}
        self.state = self.tx.init(self.p)
        key = repr(sorted(options.items())) + repr(
            {k: (v.shape, v.dtype) for k, v in params.items()}
        )
        if key not in _JITTED:
            _JITTED[key] = jax.jit(self.tx.update)
        self.update = _JITTED[key]

    def step(self, grads: dict[str, np.ndarray]) -> None:
        import optax

        u, s = self.update({k: self.jnp.asarray(v) for k, v in grads.items()}, self.state, self.p)
        self.jax.block_until_ready((u, s))  # a host-callback error surfaces here
        self.p, self.state = optax.apply_updates(self.p, u), s

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.p.items()}

    def _own(self) -> Any:
        from spectral_curv.optax import ScaleBySpectralKronState

        found = [
            s
            for s in self.jax.tree.leaves(
                self.state, is_leaf=lambda x: isinstance(x, ScaleBySpectralKronState)
            )
            if isinstance(s, ScaleBySpectralKronState)
        ]
        assert len(found) == 1
        return found[0]

    @property
    def skipped(self) -> int:
        return int(self._own().skipped)

    def snapshot(self) -> dict[str, Any]:
        from spectral_curv.optax import ScaleBySpectralKronState

        def drop(x: Any) -> Any:
            return x._replace(skipped=None) if isinstance(x, ScaleBySpectralKronState) else x

        st = self.jax.tree.map(
            drop, self.state, is_leaf=lambda x: isinstance(x, ScaleBySpectralKronState)
        )
        leaves, treedef = self.jax.tree.flatten(st)
        return {"params": self.params, "state": [np.array(x) for x in leaves], "tree": str(treedef)}

    def factors(self) -> dict[str, dict[str, np.ndarray]]:
        own = self._own()
        out = {
            k: {f: v for f, v in pre._asdict().items() if v is not None}
            for k, pre in own.precond.items()
        }
        if own.exp_avg is not None:
            for k in out:
                out[k]["exp_avg"], out[k]["exp_avg_sq"] = own.exp_avg[k], own.exp_avg_sq[k]
        return out

    def save(self, path: Any) -> None:
        leaves = self.jax.tree.leaves(self.state)
        np.savez(
            path / "state.npz",
            allow_pickle=False,
            **{f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)},
            **{f"param/{k}": np.asarray(v) for k, v in self.p.items()},
        )

    def load(self, path: Any) -> None:
        """Leaves from the file, structure from a fresh ``init`` (the optax convention)."""
        treedef = self.jax.tree.structure(self.tx.init(self.p))
        with np.load(path / "state.npz", allow_pickle=False) as z:
            leaves = [self.jnp.asarray(z[f"leaf{i}"]) for i in range(treedef.num_leaves)]
            self.p = {k: self.jnp.asarray(z[f"param/{k}"]) for k in self.p}
        self.state = self.jax.tree.unflatten(treedef, leaves)


DRIVERS: dict[str, type[Driver]] = {
    "torch": TorchDriver,
    "numpy": NumpyDriver,
    "optax": OptaxDriver,
}
_FRAMEWORK = {"torch": ("torch",), "numpy": (), "optax": ("jax", "optax")}


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> type[Driver]:
    """The driver class of one adapter (skipped when its framework is not installed)."""
    for mod in _FRAMEWORK[request.param]:
        pytest.importorskip(mod)
    return DRIVERS[request.param]


#: for the costlier checks: optax (jit compilations) only in the full run
SLOW_OPTAX = ["torch", "numpy", pytest.param("optax", marks=pytest.mark.slow)]


def _driver(name: str) -> type[Driver]:
    for mod in _FRAMEWORK[name]:
        pytest.importorskip(mod)
    return DRIVERS[name]


# --------------------------------------------------------------------------- helpers
def _np(x: Any) -> np.ndarray:
    """A NumPy copy of a tensor/array (bf16 tensors: float32 copy)."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            return (x.float() if x.dtype == torch.bfloat16 else x).numpy().copy()
    except ImportError:  # pragma: no cover
        pass
    return np.array(x)


def _tree_np(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tree_np(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_tree_np(v) for v in x]
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return _np(x)
    return x


def _assert_same(a: Any, b: Any, path: str = "") -> None:
    """Bitwise equality of nested dicts/lists of arrays and plain values (dtypes too)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (path, a.dtype, b.dtype, a.shape, b.shape)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), path
    elif isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b and type(a) is type(b), (path, a, b)


def _savez_json(doc: dict[str, Any], path: Any) -> None:
    """Arrays → ``ckpt.npz`` (no pickle), the rest → ``ckpt.json``."""
    arrays: dict[str, np.ndarray] = {}

    def strip(x: Any, where: str) -> Any:
        if isinstance(x, (np.ndarray, np.generic)):
            arrays[where] = np.asarray(x)
            return {"__array__": where}
        if isinstance(x, dict):
            return {k: strip(v, f"{where}/{k}") for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [strip(v, f"{where}/{i}") for i, v in enumerate(x)]
        assert x is None or type(x) in (int, float, str, bool), (where, type(x))
        return x

    (path / "ckpt.json").write_text(json.dumps(strip(doc, "")))
    np.savez(path / "ckpt.npz", allow_pickle=False, **arrays)


def _loadz_json(path: Any) -> dict[str, Any]:
    with np.load(path / "ckpt.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}

    def fill(x: Any) -> Any:
        if isinstance(x, dict):
            return (
                arrays[x["__array__"]]
                if set(x) == {"__array__"}
                else {k: fill(v) for k, v in x.items()}
            )
        if isinstance(x, list):
            return [fill(v) for v in x]
        return x

    return fill(json.loads((path / "ckpt.json").read_text()))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b), initial=0.0)) / max(
        1.0, float(np.max(np.abs(b), initial=0.0))
    )


F64 = {"precond_dtype": "float64"}


# --------------------------------------------------------------------------- a. trajectories
@functools.cache
def _numpy_trajectory(name: str) -> tuple[dict[str, np.ndarray], ...]:
    """The NumPy adapter's trajectory for configuration ``name``: the reference."""
    d = NumpyDriver(_init(), **CONFIGS[name], **F64)
    traj = []
    for t in range(STEPS):
        d.run(range(t, t + 1))
        traj.append(d.params)
    return tuple(traj)


#: torch for every configuration; optax (a jit compilation each, ~3 s) for the richest one in
#: the quick loop and for the others under `slow`
_QUICK_OPTAX = "graft-adam-clip-diag-sides"
TRAJECTORIES = [
    pytest.param(
        name,
        other,
        id=f"{name}-{other}",
        marks=[pytest.mark.slow] if other == "optax" and name != _QUICK_OPTAX else [],
    )
    for name in CONFIGS
    for other in ("torch", "optax")
]


@pytest.mark.parametrize(("name", "other"), TRAJECTORIES)
def test_same_float64_trajectory(name, other, record_property):
    ref = _numpy_trajectory(name)
    d = _driver(other)(_init(), **CONFIGS[name], **F64)
    worst = 0.0
    for t in range(STEPS):
        d.run(range(t, t + 1))
        got = d.params
        for k in SHAPES:
            err = _rel(got[k], ref[t][k])
            worst = max(worst, err)
            assert err <= RTOL, f"{other} vs numpy, {name}: step {t}, {k}: {err:.3e}"
    record_property("max_rel_err", worst)
    # the run moved every parameter (not a comparison of frozen arrays)
    assert min(_rel(ref[-1][k], _init()[k]) for k in SHAPES) > 1e-3


def test_trajectory_check_can_fail():
    """A changed refresh interval is far outside RTOL: the comparison has teeth."""
    a = NumpyDriver(_init(), **CONFIGS["defaults"], **F64)
    b = NumpyDriver(_init(), **{**CONFIGS["defaults"], "update_interval": 3}, **F64)
    a.run(range(STEPS))
    b.run(range(STEPS))
    assert max(_rel(a.params[k], b.params[k]) for k in SHAPES) > 1e-6


# --------------------------------------------------------------------------- b. bad options
BAD = [
    ("lr", -1.0),
    ("precond_lr", float("nan")),
    ("p", 0.0),
    ("momentum", 1.0),
    ("update_interval", 0),
    ("cayley", "bogus"),
    ("graft", "sgd"),
    ("graft_betas", (1.0, 0.0)),
    ("precond_dtype", "float16"),
    ("nonfinite", "ignore"),
    # None only where an option documents it (was accepted, then failed mid-step)
    ("lr", None),
    ("precond_lr", None),
    ("p", None),
    ("damping", None),
    ("momentum", None),
    ("weight_decay", None),
    ("graft_betas", (0.9, None)),
    # a truncated map far from orthogonal: the basis blew up (fuzzing), so at most 0.5
    ("max_step_norm", 1.0),
]


@pytest.mark.parametrize(("option", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_hyperparameter_raises_naming_it(adapter, option, value):
    spelled = "learning_rate" if (adapter.name, option) == ("optax", "lr") else option
    with pytest.raises(ValueError, match=f"`{spelled}`"):
        adapter(_init(), **{option: value})


# --------------------------------------------------------------------------- c. deprecated
@pytest.mark.parametrize("adapter", SLOW_OPTAX, indirect=True)
def test_deprecated_names_warn_and_match(adapter):
    hp = dict(lr=0.02, graft="adam", momentum=0.5, **F64)
    with pytest.warns(DeprecationWarning) as rec:
        old = adapter(_init(), **hp, betas=(0.8, 0.95), eps=1e-6)
    said = " ".join(str(w.message) for w in rec)
    assert "`betas` is renamed `graft_betas`" in said and "`eps` is renamed `graft_eps`" in said
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = adapter(_init(), **hp, graft_betas=(0.8, 0.95), graft_eps=1e-6)
    for d in (old, new):
        d.run(range(6))
    _assert_same(old.snapshot(), new.snapshot())
    # the constants matter (so the equality above is not vacuous)
    other = NumpyDriver(_init(), **hp)
    other.run(range(6))
    assert max(_rel(old.params[k], other.params[k]) for k in SHAPES) > 1e-8


def test_old_and_new_name_together_raise(adapter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(TypeError, match="both `eps`"):
            adapter(_init(), eps=1e-6, graft_eps=1e-7)
        with pytest.raises(TypeError, match="both `betas`"):
            adapter(_init(), betas=(0.8, 0.9), graft_betas=(0.8, 0.95))


# --------------------------------------------------------------------------- d. non-finite
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("adapter", SLOW_OPTAX, indirect=True)
def test_nonfinite_raise_changes_nothing(adapter, bad):
    d = adapter(_init(), lr=0.05, graft="adam", **F64)
    d.run(range(3))
    before = d.snapshot()
    with pytest.raises(d.raise_errors, match="NaN or inf"):
        d.run(range(3, 4), bad={3: bad})
    _assert_same(d.snapshot(), before)
    assert d.skipped == 0
    d.run(range(4, 5))  # and it carries on


@pytest.mark.parametrize("adapter", SLOW_OPTAX, indirect=True)
def test_nonfinite_skip_is_a_no_op_that_is_counted(adapter):
    hp = dict(lr=0.05, graft="adam", nonfinite="skip", **F64)
    clean, skipping = adapter(_init(), **hp), adapter(_init(), **hp)
    clean.run(range(3))
    skipping.run(range(3))
    before = skipping.snapshot()
    skipping.run(range(3, 5), bad={3: float("nan"), 4: -float("inf")})
    _assert_same(skipping.snapshot(), before)
    assert skipping.skipped == 2 and clean.skipped == 0
    clean.run(range(5, 12))
    skipping.run(range(5, 12))
    _assert_same(skipping.snapshot(), clean.snapshot())
    assert skipping.skipped == 2


# --------------------------------------------------------------------------- e. checkpoints
def test_checkpoint_resume_is_bitwise(adapter, tmp_path):
    hp = dict(CONFIGS["graft-adam-clip-diag-sides"], **F64)
    d = adapter(_init(), **hp)
    d.run(range(7))
    d.save(tmp_path)
    d.run(range(7, 15))
    # a fresh optimizer (torch and NumPy restore the saved options; optax states carry none)
    resumed = adapter(_init(), **(hp if adapter.name == "optax" else {**hp, "lr": 0.5}))
    resumed.load(tmp_path)
    resumed.run(range(7, 15))
    _assert_same(resumed.snapshot(), d.snapshot())
    assert resumed.skipped == d.skipped


def test_optax_orbax_checkpoint_resume_is_bitwise(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    d = _driver("optax")(_init(), lr=0.05, graft="adam", **F64)
    d.run(range(5))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "ck", {"params": d.p, "state": d.state})
    ckptr.wait_until_finished()
    d.run(range(5, 10))
    resumed = _driver("optax")(_init(), lr=0.05, graft="adam", **F64)
    target = {"params": resumed.p, "state": resumed.state}
    restored = ckptr.restore(tmp_path / "ck", target)
    resumed.p, resumed.state = restored["params"], restored["state"]
    resumed.run(range(5, 10))
    _assert_same(resumed.snapshot(), d.snapshot())


# --------------------------------------------------------------------------- f. corrupted
def _nan_at_00(b: np.ndarray) -> np.ndarray:
    b = b.copy()
    b[0, 0] = np.nan
    return b


#: case → (param, field, new value from (old value, the other params' state), error match);
#: ``match=None``: the checkpoint must load.
CORRUPT: dict[str, tuple[str, str, Callable[[Any, Any], Any], str | None]] = {
    "nan-in-B_C": ("w", "B_C", lambda v, e: _nan_at_00(v), "`B_C`"),
    "negative-d_K": ("w", "d_K", lambda v, e: -v, "`d_K`"),
    "alpha-zero": ("w", "alpha", lambda v, e: 0 * v, "`alpha`"),
    "B_C-not-orthogonal": ("w", "B_C", lambda v, e: 2 * np.eye(v.shape[0]), "`B_C`"),
    "B_C-of-a-4x4-on-3x4": ("w", "B_C", lambda v, e: e("sq", "B_C"), "`B_C`"),
    "rejected-above-refreshes": ("w", "rejected", lambda v, e: e("w", "refreshes") + 1, "rejected"),
    "int-step": ("w", "step", lambda v, e: int(v), None),
}


def _corrupt(d: Any, sd: dict[str, Any], case: str) -> dict[str, Any]:
    name, field, fn, _ = CORRUPT[case]
    sd = copy.deepcopy(sd)

    def entry(pname: str, f: str) -> Any:
        x = d.entry(sd, pname)[f]
        return int(x) if f in ("step", "refreshes", "rejected") else _np(x)

    old = d.entry(sd, name)[field]
    new = fn(entry(name, field), entry)
    if case == "int-step":
        new = d.as_int(new)
    elif type(old) is int:
        new = int(new)
    else:
        new = d.as_array(np.asarray(new), old)
    d.entry(sd, name)[field] = new
    return sd


@pytest.mark.parametrize("case", list(CORRUPT))
@pytest.mark.parametrize("name", ["torch", "numpy"])
def test_corrupted_checkpoint_is_rejected_changing_nothing(name, case):
    hp = dict(lr=0.05, graft="adam", **F64)
    trained = _driver(name)(_init(), **hp)
    trained.run(range(5))
    good = trained.state_dict()
    bad = _corrupt(trained, good, case)
    match = CORRUPT[case][3]
    if match is None:  # loads, and then steps exactly as the good checkpoint
        loaded, again = _driver(name)(_init(), **hp), _driver(name)(_init(), **hp)
        loaded.load_state_dict(bad)
        again.load_state_dict(good)
        _assert_same(loaded.snapshot(), again.snapshot())
        loaded.run(range(5, 8))
        again.run(range(5, 8))
        _assert_same(loaded.snapshot(), again.snapshot())
        return
    fresh = _driver(name)(_init(), **hp)
    fresh.run(range(2))
    before = fresh.snapshot()
    with pytest.raises(ValueError, match=match) as err:
        fresh.load_state_dict(bad)
    assert {"torch": "param 0 ", "numpy": "param 'w'"}[name] in str(err.value)
    _assert_same(fresh.snapshot(), before)
    fresh.load_state_dict(good)  # the unmodified checkpoint still loads


def _optax_has_validator() -> bool:
    try:
        import spectral_curv.optax as sco
    except ImportError:
        return True  # skipped anyway
    return hasattr(sco, "validate_state")


@pytest.mark.xfail(not _optax_has_validator(), strict=True, reason="validate_state not implemented")
@pytest.mark.parametrize("case", list(CORRUPT))
def test_optax_corrupted_state_is_rejected(case):
    _driver("optax")
    import jax.numpy as jnp

    from spectral_curv import optax as sco

    d = OptaxDriver(_init(), lr=0.05, graft="adam", **F64)
    d.run(range(5))
    own = d._own()
    name, field, fn, match = CORRUPT[case]

    def entry(pname: str, f: str) -> Any:
        if f in ("step", "refreshes", "rejected"):
            return int({"step": own.count, "refreshes": own.refreshes}.get(f, own.rejected[pname]))
        return np.array(getattr(own.precond[pname], f))

    new = fn(entry(name, field), entry)
    if field == "step":
        bad = own._replace(count=new)
    elif field in ("refreshes", "rejected"):
        bad = own._replace(rejected={**own.rejected, name: jnp.asarray(new, jnp.int32)})
    else:
        pre = own.precond[name]._replace(**{field: jnp.asarray(new)})
        bad = own._replace(precond={**own.precond, name: pre})
    sco.validate_state(own, d.p)  # the good state passes
    if match is None:
        sco.validate_state(bad, d.p)
    else:
        with pytest.raises(ValueError, match=match) as err:
            sco.validate_state(bad, d.p)
        assert "['w']" in str(err.value)  # names the leaf


# --------------------------------------------------------------------------- g. low precision
@pytest.mark.parametrize("adapter", SLOW_OPTAX, indirect=True)
def test_float16_params_keep_float32_factors(adapter):
    P = _init(np.float16)
    d = adapter(P, lr=0.01, graft="adam")
    d.run(range(4))
    for k, v in d.params.items():
        assert v.dtype == np.float16 and np.isfinite(v).all(), k
    for k, fields in d.factors().items():
        for f, v in fields.items():
            assert str(v.dtype).rsplit(".", 1)[-1] == "float32", (adapter.name, k, f, v.dtype)
    assert not any(np.array_equal(d.params[k], P[k]) for k in ("w", "conv"))


def test_torch_bf16_params_keep_float32_factors():
    _driver("torch")
    import torch

    from spectral_curv.torch import SpectralKron

    ps = [torch.nn.Parameter(torch.from_numpy(v).to(torch.bfloat16)) for v in _init().values()]
    opt = SpectralKron(ps, lr=0.01, graft="adam")
    for t in range(3):
        g = _grads({k: _np(p) for k, p in zip(SHAPES, ps)}, t)
        for p, k in zip(ps, SHAPES):
            p.grad = torch.from_numpy(g[k]).to(torch.bfloat16)
        opt.step()
    for p in ps:
        assert p.dtype == torch.bfloat16
        for k, v in opt.state[p].items():
            if v.is_floating_point():
                assert v.dtype == torch.float32, k


# --------------------------------------------------------------------------- h. torch conventions
def _trained_torch(**hp: Any) -> TorchDriver:
    d = _driver("torch")(_init(), **{"lr": 0.05, **hp})
    d.run(range(3))
    return d  # type: ignore[return-value]


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_torch_copy_keeps_nonfinite_and_skipped_steps(how):
    d = _trained_torch(nonfinite="skip")
    d.run(range(3, 4), bad={3: float("nan")})
    assert d.opt.skipped_steps == 1
    clone = copy.deepcopy(d.opt) if how == "deepcopy" else pickle.loads(pickle.dumps(d.opt))
    assert clone.nonfinite == "skip" and clone.skipped_steps == 1
    assert clone.state_dict()["param_groups"] == d.opt.state_dict()["param_groups"]


def test_torch_load_state_dict_hooks():
    import torch

    d = _trained_torch()
    sd = d.opt.state_dict()
    fresh = _trained_torch()
    seen: dict[str, Any] = {}

    def pre(opt: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
        seen["pre_keys"] = sorted(state_dict["state"])
        out = copy.deepcopy(state_dict)
        out["param_groups"][0]["lr"] = 0.123
        out["state"][0]["momentum_buffer"] = torch.full_like(
            out["state"][0]["momentum_buffer"], 7.0
        )
        return out

    def post(opt: Any) -> None:
        p0 = opt.param_groups[0]["params"][0]
        seen["post_step"] = int(opt.state[p0]["step"])
        seen["post_buf"] = float(opt.state[p0]["momentum_buffer"].flatten()[0])

    fresh.opt.register_load_state_dict_pre_hook(pre)
    fresh.opt.register_load_state_dict_post_hook(post)
    fresh.opt.load_state_dict(sd)
    assert seen["pre_keys"] == list(range(len(SHAPES)))  # the full "state"
    assert fresh.opt.param_groups[0]["lr"] == 0.123  # the pre-hook's dict was loaded
    assert seen["post_step"] == 3 and seen["post_buf"] == 7.0


@pytest.mark.parametrize("name", ["torch", "numpy"])
def test_callable_lr_is_rejected_where_schedules_are_not_taken(name):
    # optax takes a schedule; torch and NumPy change `lr` between steps instead (it was
    # accepted and failed inside the first step, after the counters had advanced)
    with pytest.raises(ValueError, match="`lr`"):
        DRIVERS[name](_init(), lr=lambda t: 0.1)


@pytest.mark.parametrize("before", ["any step", "a parameter's first gradient"])
def test_torch_state_missing_from_a_checkpoint_starts_fresh(before):
    # torch.optim's state is a defaultdict: a parameter without saved state (a checkpoint
    # taken before any step, or before the parameter had a gradient) starts fresh on its
    # first step, as on an optimizer that never saved; a KeyError before
    import torch

    from spectral_curv.torch import SpectralKron

    def make() -> tuple[list[torch.nn.Parameter], SpectralKron]:
        ps = [torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64)) for _ in range(2)]
        return ps, SpectralKron(ps, lr=0.1)

    def give(ps: list[torch.nn.Parameter], which: list[int], t: int) -> None:
        for i in which:
            ps[i].grad = torch.full_like(ps[i], 0.1 * (t + 1 + i)).cumsum(0)

    first = [] if before == "any step" else [0]
    (a, opt_a), (b, opt_b) = make(), make()
    for t in range(2 if first else 0):
        give(a, first, t)
        opt_a.step()
        give(b, first, t)
        opt_b.step()
    (c, opt_c) = make()
    with torch.no_grad():
        for x, y in zip(c, a):
            x.copy_(y)
    opt_c.load_state_dict(opt_a.state_dict())
    for t in range(2, 6):
        for ps, opt in ((b, opt_b), (c, opt_c)):
            give(ps, [0, 1], t)
            opt.step()
    for x, y in zip(b, c):
        assert torch.equal(x, y)
    assert int(opt_c.state[c[1]]["step"]) == 4


def test_torch_empty_state_entry_loads_as_no_state():
    # reading opt.state[p] for a parameter without state creates `{}` (a defaultdict), which
    # state_dict() saves; loading it was a ValueError ("must have the keys ..."), torch's
    # optimizers load it as no state
    import torch

    from spectral_curv.torch import SpectralKron

    ps = [torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64)) for _ in range(2)]
    opt = SpectralKron(ps, lr=0.1)
    ps[0].grad = torch.ones(3, 2, dtype=torch.float64)
    opt.step()
    assert opt.state[ps[1]] == {}  # the read that creates the empty entry
    fresh = SpectralKron([torch.nn.Parameter(p.detach().clone()) for p in ps], lr=0.1)
    fresh.load_state_dict(opt.state_dict())
    q = fresh.param_groups[0]["params"]
    assert q[1] not in fresh.state and int(fresh.state[q[0]]["step"]) == 1


def test_torch_non_parameter_state_is_copied_as_is():
    import torch

    d = _trained_torch()
    d.opt.state["extra"] = {"note": "mine", "t": torch.arange(3)}
    sd = d.opt.state_dict()
    fresh = _trained_torch()
    fresh.opt.load_state_dict(sd)
    got = fresh.opt.state["extra"]
    assert got["note"] == "mine" and torch.equal(got["t"], torch.arange(3))
    assert got is not d.opt.state["extra"]


# --------------------------------------------------------------------------- the test helpers
@pytest.mark.skip_backends("array_api_strict", "jax", reason="checks the marker itself")
def test_skip_backends_marker(xp, request):
    from conftest import backend

    assert backend(xp) not in ("array_api_strict", "jax")


def test_xp_assert_close_and_equal(xp):
    from conftest import asarray, backend

    a = asarray(xp, [1.0, 2.0, math.pi])
    xp_assert_close(a, asarray(xp, [1.0, 2.0, math.pi * (1 + 1e-9)]))
    xp_assert_equal(a, asarray(xp, [1.0, 2.0, math.pi]))
    cases = [
        (asarray(xp, [1.0, 2.0, 3.2]), "Not equal to tolerance"),
        (asarray(xp, [1.0, 2.0, math.pi], dtype=xp.float32), "dtype"),
        (asarray(xp, [[1.0, 2.0, math.pi]]), "shape"),
    ]
    if backend(xp) != "numpy":
        cases.append((np.asarray([1.0, 2.0, math.pi]), "namespace"))
    for bad, what in cases:
        with pytest.raises(AssertionError, match=what):
            xp_assert_close(bad, a, xp=xp)
    # the default rtol follows the dtype: float32's admits what float64's does not
    a32 = asarray(xp, [1.0], dtype=xp.float32)
    xp_assert_close(a32 * (1 + 1e-4), a32)
    with pytest.raises(AssertionError):
        xp_assert_close(asarray(xp, [1.0 + 1e-4]), asarray(xp, [1.0]))


def test_rejected_diagonal_refresh_is_per_entry_in_every_adapter():
    # torch refreshes a group's vectors as one concatenated bucket, and keep-last-good
    # decided for the whole bucket (every vector kept its old factors and counted a
    # rejection); NumPy and optax decided per parameter: 5e-3 to 68 apart (fuzzing). Now the
    # diagonal scheme's keep-last-good is per entry in the core, counted per parameter.
    import torch

    from spectral_curv.numpy import SpectralKron as NK
    from spectral_curv.torch import SpectralKron as TK

    kw = dict(lr=0.01, exp="exact", momentum=0.0)
    a, b = (torch.nn.Parameter(torch.zeros(n, dtype=torch.float64)) for n in (3, 4))
    t = TK([a, b], **kw)
    P = [np.zeros(3), np.zeros(4)]
    n = NK(P, **kw)
    for x, y in ((np.ones(3), np.ones(4)), (np.array([100.0, 3.0, 3.0]), np.full(4, 2.0))):
        a.grad, b.grad = torch.tensor(x), torch.tensor(y)  # a[0]'s 2nd refresh overflows
        t.step()
        P = n.step(P, [x, y])
    np.testing.assert_allclose(a.detach().numpy(), P[0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(b.detach().numpy(), P[1], rtol=1e-12, atol=0)
    assert [int(t.state[p]["rejected"]) for p in (a, b)] == list(n.rejected) == [1, 0]
    # the overflowing entry kept its factor, the others of the same vector were refreshed
    d = t.state[a]["d"]
    np.testing.assert_array_equal(d.numpy(), n.state_dict()["state"][0]["d"])
    assert float(d[1]) != float(d[0])


def test_graft_with_a_zero_direction_stays_finite(adapter):
    # graft="adam" rescaled U by ‖adam‖/max(‖U‖, tiny): a zero gradient after a nonzero one
    # (U = 0, Adam's momentum ≠ 0) gave 0·inf = NaN parameters in every adapter once ‖adam‖
    # > tiny·max ≈ 4 (here the 36-entry conv weight; found by fuzzing)
    d = adapter(_init(), lr=0.1, graft="adam", **F64)
    d.step({k: np.ones(s) for k, s in SHAPES.items()})
    for _ in range(2):
        d.step({k: np.zeros(s) for k, s in SHAPES.items()})
    assert all(np.all(np.isfinite(np.asarray(v))) for v in d.params.values())


@pytest.mark.parametrize("scale", [1e10, 1e15])
def test_float32_direction_is_invariant_to_the_gradient_scale(adapter, scale):
    """The step is invariant to a constant scale of the gradients (math §4: W, the gaps and
    α scale together), in float32 too, as long as the squares fit: the rotation generator
    multiplied W by δ and squared it before scaling (overflow at |G| ~ 1e10; XLA's flushed
    subnormal scale² made 0·inf = NaN and a rejected refresh, NumPy's gave no rotation), so
    optax and NumPy lost the invariance long before torch (found by an outside probe)."""
    P = _init(np.float32)
    runs = []
    for s in (1.0, scale):
        d = adapter(P, lr=0.01, momentum=0.0, max_update_rms=None)
        for t in range(12):
            g = _grads(P, t)  # the same gradients in both runs, scaled
            d.step({k: (v * np.float32(s)).astype(np.float32) for k, v in g.items()})
        runs.append(d.params)
    for k in SHAPES:
        a, b = (np.asarray(r[k], dtype=np.float64) for r in runs)
        np.testing.assert_allclose(b - P[k], a - P[k], rtol=2e-3, atol=1e-6, err_msg=k)


def test_a_huge_first_gradient_gives_the_same_first_step_in_every_adapter():
    """A 1e20 float32 gradient on the first step (α₀ clamped to float32's largest value; the
    refresh overflows and is rejected): every adapter takes the step ``G/√α₀``. optax took
    none (the norm ratio of the root-p rescale scaled both norms by the larger one, and the
    smaller one's squares were flushed to 0 on XLA's CPU), and its factors, at 1e38, then
    held the parameters still for hundreds of steps (found by an outside probe)."""
    P = {"w": np.zeros((8, 5), np.float32)}
    g = {"w": (1e20 * np.random.default_rng(0).standard_normal((8, 5))).astype(np.float32)}
    moved = {}
    for name in ADAPTERS:
        try:
            d = _driver(name)(P, lr=0.01, momentum=0.0, max_update_rms=None)
        except pytest.skip.Exception:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optim.RejectedRefreshWarning)
            d.step(g)
        moved[name] = np.asarray(d.params["w"], dtype=np.float64) - P["w"]
    assert moved
    alpha0 = float(np.finfo(np.float32).max)  # mean(G²) = 1e40, clamped (optim.first_state)
    ref = -0.01 * g["w"].astype(np.float64) / np.sqrt(alpha0)
    for name, u in moved.items():
        np.testing.assert_allclose(u, ref, rtol=1e-3, err_msg=name)
