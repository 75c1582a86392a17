"""NumPy adapter: :class:`SpectralKron`, a plain optimizer over a dict or list of arrays.

The math is the core's (SPEC §3 diagonal scheme, §4 Kronecker scheme, §5 damping), reached
only through :mod:`spectral_curv.optim` (schedule, first-step scale, keep-last-good refresh,
re-orthonormalisation, direction, grafting, clipping, momentum, decoupled weight decay);
this module owns storage, routing and control flow, and reproduces
:class:`spectral_curv.torch.SpectralKron` step for step (same options, defaults, schedule,
per-parameter counters, bucketing of same-shaped layers into one batched refresh, and
non-finite policy):

- order ≥ 2: Kronecker ``α S_C ⊗ S_K`` on ``(shape[0], prod(shape[1:]))`` (SPEC §4), a side
  longer than ``max_precond_dim`` kept diagonal;
- order ≤ 1 (biases, scalars) and empty arrays: the diagonal scheme (SPEC §3).

The optimizer is functional in its parameters: :meth:`SpectralKron.step` takes the
parameters and their gradients (same container: a ``dict`` of name → array, or a list) and
returns new parameters in that container; the inputs are never mutated. The optimizer keeps
only its own state, which :meth:`SpectralKron.state_dict` exports as NumPy arrays plus plain
Python values (``np.savez`` + ``json``, no pickle) and :meth:`SpectralKron.load_state_dict`
validates and restores bit for bit.

Example::

    >>> import numpy as np
    >>> from spectral_curv.numpy import SpectralKron
    >>> params = {"w": np.zeros((4, 3)), "b": np.zeros(3)}
    >>> opt = SpectralKron(params, lr=1e-2)
    >>> grads = {"w": np.ones((4, 3)), "b": np.ones(3)}
    >>> params = opt.step(params, grads)
    >>> sorted(params), params["w"].dtype, opt.steps
    (['b', 'w'], dtype('float64'), {'w': 1, 'b': 1})
    >>> resumed = SpectralKron({"w": np.zeros((4, 3)), "b": np.zeros(3)})
    >>> resumed.load_state_dict(opt.state_dict())
    >>> resumed.steps["w"], resumed.options["lr"]
    (1, 0.01)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _array as A
from . import diag, kron, optim
from ._array import Array, Namespace

__all__ = ["FORMAT", "SpectralKron"]

#: Tag of :meth:`SpectralKron.state_dict` (checked by :meth:`SpectralKron.load_state_dict`).
FORMAT = "spectral_curv.numpy.SpectralKron/1"

#: Options added after the first release: a state dict without them still loads.
_LATER_OPTIONS = ("rotation",)
_NONFINITE = ("raise", "skip")
_SD_KEYS = ("format", "params", "options", "skipped_steps", "state")
_COUNTERS = ("step", "refreshes", "rejected")

Params = dict[str, Array] | list[Array] | tuple[Array, ...]


# ----------------------------------------------------------------------------- options
def _check_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Validated (``optim.check_options``), normalised copy of the options: Python
    floats/ints, ``betas`` a tuple, ``precond_dtype`` a ``np.dtype`` or None."""
    optim.check_options(opts)
    o = dict(opts)
    for k in (
        "lr",
        "precond_lr",
        "p",
        "gamma",
        "damping",
        "weight_decay",
        "eps",
        "momentum",
        "tie_tol",
        "max_step_norm",
        "max_update_rms",
    ):
        if o[k] is not None:
            o[k] = float(o[k])
    for k in (
        "update_interval",
        "max_precond_dim",
        "precond_warmup",
        "reorth_interval",
        "cayley_terms",
    ):
        o[k] = int(o[k])
    o["betas"] = (float(o["betas"][0]), float(o["betas"][1]))
    dt = o["precond_dtype"]
    if dt is not None:
        try:
            npdt = np.dtype(dt)
        except TypeError:
            npdt = None
        if npdt is None or npdt.kind != "f" or isinstance(dt, bool):
            raise ValueError(f"`precond_dtype` must be a floating numpy dtype or None, got {dt!r}")
        o["precond_dtype"] = npdt
    return o


def _options_to_sd(o: dict[str, Any]) -> dict[str, Any]:
    out = dict(o)
    out["betas"] = list(o["betas"])
    out["precond_dtype"] = None if o["precond_dtype"] is None else o["precond_dtype"].name
    return out


def _plain(x: Any) -> Any:
    """Tuples → lists, recursively (a state dict may have been through json or not)."""
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ----------------------------------------------------------------------------- optimizer
class SpectralKron:
    """Kronecker spectral-factorized preconditioner (Lin et al., ICML 2025) for NumPy arrays.

    Same update, options and defaults as :class:`spectral_curv.torch.SpectralKron` (see its
    docstring; SPEC §3–§5): per parameter with ``t`` its 0-based step, the first step sets
    ``S₀ = α₀ I`` (``α₀ = mean(G²) + λ``; diagonal ``d₀ = g² + λ``), a refresh happens when
    ``t == 0 or t < precond_warmup or t % update_interval == 0`` (keep-last-good: a refresh
    giving non-finite or non-positive factors is discarded and counted in ``rejected``), and
    ``U = S^{-1/p} G`` goes through Adam grafting, RMS clipping, heavy-ball momentum and
    ``M ← (1 − lr·wd) M − lr·m``.

    Args:
        params: a ``dict`` of name (str) → array or a list/tuple of arrays (real floating);
            it fixes the structure, shapes and dtypes that :meth:`step` accepts. Arrays of
            any array-API namespace are accepted (``optim.namespace``); NumPy is the target.
        lr, precond_lr, p, gamma, damping, momentum, weight_decay, update_interval,
        precond_warmup, reorth_interval, cayley, cayley_terms, exp, tie_tol, max_step_norm,
        rotation, max_update_rms, graft, betas, eps, max_precond_dim: as in the torch
        optimizer.
        precond_dtype: dtype of the factors, momentum and graft moments (a NumPy floating
            dtype); None (default): each parameter's own dtype.
        nonfinite: ``"raise"`` (default): a NaN/inf gradient raises a ValueError before any
            state changes; ``"skip"``: the whole step is skipped (``skipped_steps`` counts).

    Bad hyperparameters raise a ValueError naming the argument; non-array or non-floating
    parameters/gradients a TypeError; a structure, shape or dtype mismatch a ValueError.

    Example (a least-squares fit, parameters as a list)::

        >>> import numpy as np
        >>> from spectral_curv.numpy import SpectralKron
        >>> target = np.random.default_rng(0).standard_normal((5, 4))
        >>> params = [np.zeros((5, 4)), np.zeros(4)]
        >>> loss = lambda p: float(((p[0] - target) ** 2).sum() + (p[1] ** 2).sum())
        >>> opt = SpectralKron(params, lr=0.05, momentum=0.0)
        >>> l0 = loss(params)
        >>> for _ in range(50):
        ...     params = opt.step(params, [2 * (params[0] - target), 2 * params[1]])
        >>> [p.shape for p in params], opt.steps, bool(loss(params) < 0.01 * l0)
        ([(5, 4), (4,)], [50, 50], True)
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        precond_lr: float = 0.1,
        *,
        p: float = 2.0,
        gamma: float = 1.0,
        damping: float = 1e-8,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        update_interval: int = 2,
        precond_warmup: int = 10,
        reorth_interval: int = 10,
        cayley: str = "quadratic",
        cayley_terms: int = 1,
        exp: str = "first_order",
        tie_tol: float | None = None,
        max_step_norm: float | None = None,
        rotation: str = "damped",
        max_update_rms: float | None = None,
        graft: str | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_precond_dim: int = optim.DEFAULT_MAX_PRECOND_DIM,
        precond_dtype: Any = None,
        nonfinite: str = "raise",
    ) -> None:
        if nonfinite not in _NONFINITE:
            raise ValueError(f"`nonfinite` must be one of {_NONFINITE}, got {nonfinite!r}")
        self._opts = _check_options(
            dict(
                lr=lr,
                precond_lr=precond_lr,
                p=p,
                gamma=gamma,
                damping=damping,
                momentum=momentum,
                weight_decay=weight_decay,
                update_interval=update_interval,
                precond_warmup=precond_warmup,
                reorth_interval=reorth_interval,
                cayley=cayley,
                cayley_terms=cayley_terms,
                exp=exp,
                tie_tol=tie_tol,
                max_step_norm=max_step_norm,
                rotation=rotation,
                max_update_rms=max_update_rms,
                graft=graft,
                betas=betas,
                eps=eps,
                max_precond_dim=max_precond_dim,
                precond_dtype=precond_dtype,
            )
        )
        self.nonfinite = nonfinite
        self.skipped_steps = 0
        if isinstance(params, Mapping):
            bad = [k for k in params if not isinstance(k, str)]
            if bad:
                raise TypeError(f"`params` keys must be str, got {bad[0]!r}")
            self._kind: type = dict
            self._names: list[str] | None = list(params)
            arrays = list(params.values())
        elif isinstance(params, (list, tuple)):
            self._kind = type(params)
            self._names = None
            arrays = list(params)
        else:
            raise TypeError(
                f"`params` must be a dict of name → array or a list of arrays, got {type(params)!r}"
            )
        self._xp: Namespace = self._namespace(arrays, "params")
        self._is_numpy = self._xp is optim.namespace(np.empty(0))
        for i, a in enumerate(arrays):
            self._check_floating(a, f"params[{self._label(i)}]")
        self._shapes = [tuple(int(s) for s in a.shape) for a in arrays]
        self._dtypes = [a.dtype for a in arrays]
        self._devices = [A.device(a) for a in arrays]
        self._plans = [self._plan(i, self._opts) for i in range(len(arrays))]
        self._states = [self._fresh(i, self._opts) for i in range(len(arrays))]

    # ----------------------------------------------------------------- introspection
    @property
    def options(self) -> dict[str, Any]:
        """A copy of the (normalised) hyperparameters."""
        return dict(self._opts)

    @property
    def lr(self) -> float:
        """The step size; assign to change it (e.g. for a schedule)."""
        return self._opts["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        optim.check_options({"lr": value})
        self._opts["lr"] = float(value)

    @property
    def state(self) -> dict[str, dict[str, Any]] | list[dict[str, Any]]:
        """Per-parameter state in the params' structure (read-only views: do not mutate)."""
        return self._structure(self._states)

    @property
    def plans(self) -> dict[str, tuple[Any, ...]] | list[tuple[Any, ...]]:
        """Per-parameter :func:`optim.plan` (``("diag",)`` or ``("kron", r, c, …)``)."""
        return self._structure(self._plans)

    @property
    def steps(self) -> dict[str, int] | list[int]:
        """Per-parameter step counters (a parameter given a ``None`` gradient is not counted)."""
        return self._structure([s["step"] for s in self._states])

    @property
    def refreshes(self) -> dict[str, int] | list[int]:
        """Per-parameter number of preconditioner refreshes (accepted or rejected)."""
        return self._structure([s["refreshes"] for s in self._states])

    @property
    def rejected(self) -> dict[str, int] | list[int]:
        """Per-parameter number of refreshes discarded by keep-last-good."""
        return self._structure([s["rejected"] for s in self._states])

    # ----------------------------------------------------------------- helpers
    def _structure(self, values: list[Any]) -> Any:
        if self._names is not None:
            return dict(zip(self._names, values))
        return list(values)

    def _label(self, i: int) -> str:
        return repr(self._names[i]) if self._names is not None else str(i)

    @staticmethod
    def _namespace(arrays: list[Array], what: str) -> Namespace:
        if not arrays:
            return optim.namespace(np.empty(0))
        try:
            return optim.namespace(*arrays)
        except TypeError as e:
            raise TypeError(f"`{what}` must hold arrays of one array-API namespace: {e}") from e

    def _check_floating(self, a: Array, what: str) -> None:
        try:
            ns = optim.namespace(a)
        except TypeError as e:
            raise TypeError(f"`{what}` is not an array: {type(a)!r}") from e
        if ns is not self._xp:
            raise TypeError(f"`{what}` belongs to {ns.__name__}, not {self._xp.__name__}")
        if not ns.isdtype(a.dtype, "real floating"):
            raise TypeError(f"`{what}` must have a real floating dtype, got {a.dtype}")

    def _pdtype(self, i: int, opts: dict[str, Any]) -> Any:
        dt = opts["precond_dtype"]
        if dt is None:
            return self._dtypes[i]
        return dt if self._is_numpy else getattr(self._xp, dt.name)

    def _plan(self, i: int, opts: dict[str, Any]) -> tuple[Any, ...]:
        return optim.plan(self._shapes[i], opts["max_precond_dim"])

    def _fresh(self, i: int, opts: dict[str, Any]) -> dict[str, Any]:
        """A new per-parameter state (``S = I``; the first step sets its scale)."""
        xp, shape, dev = self._xp, self._shapes[i], self._devices[i]
        dt = self._pdtype(i, opts)
        pre = optim.init(self._plan(i, opts), shape, dtype=dt, device=dev, xp=xp)
        st: dict[str, Any] = {"step": 0, "refreshes": 0, "rejected": 0}
        st["momentum_buffer"] = xp.zeros(shape, dtype=dt, device=dev)
        for k, v in zip(pre._fields, pre):
            if v is not None:
                st[k] = v
        if opts["graft"] == "adam":
            st["exp_avg"] = xp.zeros(shape, dtype=dt, device=dev)
            st["exp_avg_sq"] = xp.zeros(shape, dtype=dt, device=dev)
        return st

    def _unpack(self, values: Any, what: str, allow_none: bool) -> list[Any]:
        """The arrays of ``values`` in parameter order, checked against the structure."""
        n = len(self._shapes)
        if self._names is not None:
            if not isinstance(values, Mapping):
                raise ValueError(f"`{what}` must be a dict like the params, got {type(values)!r}")
            if set(values) != set(self._names):
                missing = sorted(set(self._names) - set(values))
                extra = sorted(map(str, set(values) - set(self._names)))
                raise ValueError(f"`{what}` keys differ: missing {missing}, unexpected {extra}")
            arrays = [values[k] for k in self._names]
        else:
            if not isinstance(values, (list, tuple)):
                raise ValueError(f"`{what}` must be a list like the params, got {type(values)!r}")
            if len(values) != n:
                raise ValueError(f"`{what}` must hold {n} arrays, got {len(values)}")
            arrays = list(values)
        for i, a in enumerate(arrays):
            if a is None and allow_none:
                continue
            label = f"{what}[{self._label(i)}]"
            self._check_floating(a, label)
            if tuple(a.shape) != self._shapes[i]:
                raise ValueError(
                    f"`{label}` must have shape {self._shapes[i]}, got {tuple(a.shape)}"
                )
            if a.dtype != self._dtypes[i]:
                raise ValueError(f"`{label}` must have dtype {self._dtypes[i]}, got {a.dtype}")
        return arrays

    def _pack(self, arrays: list[Array]) -> Params:
        if self._names is not None:
            return dict(zip(self._names, arrays))
        return self._kind(arrays)

    # ----------------------------------------------------------------- the step
    def step(self, params: Params, grads: Params) -> Params:
        """One optimisation step: returns the new parameters (same container as ``params``).

        ``grads`` has the params' structure; a ``None`` gradient leaves that parameter (and
        its counters) as it is. Everything is validated before any state changes: a bad
        structure/shape/dtype or a non-finite gradient (``nonfinite="raise"``) leaves the
        optimizer as it was; with ``nonfinite="skip"`` the step returns copies of ``params``.
        """
        xp = self._xp
        ps = self._unpack(params, "params", allow_none=False)
        gs = self._unpack(grads, "grads", allow_none=True)
        active = [i for i, g in enumerate(gs) if g is not None]
        if not optim.check_finite_grads(xp, [gs[i] for i in active]):
            if self.nonfinite == "raise":
                raise ValueError(
                    "SpectralKron: a gradient contains NaN or inf; no state was changed "
                    "(pass nonfinite='skip' to skip such steps instead)"
                )
            self.skipped_steps += 1
            return self._pack([xp.asarray(a, copy=True) for a in ps])
        states = [dict(s) for s in self._states]  # committed only once the step succeeded
        # Overflow/NaN inside a refresh is expected and handled (keep-last-good): no warnings.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            new = self._update(ps, gs, states, active)
        self._states = states
        return self._pack(new)

    def _refresh_opts(self) -> dict[str, Any]:
        o = self._opts
        keys = (
            "precond_lr",
            "gamma",
            "damping",
            "cayley",
            "exp",
            "cayley_terms",
            "tie_tol",
            "max_step_norm",
            "rotation",
        )
        return {k: o[k] for k in keys}

    def _update(
        self, ps: list[Array], gs: list[Array], states: list[dict[str, Any]], active: list[int]
    ) -> list[Array]:
        o = self._opts
        buckets: dict[tuple[Any, ...], list[int]] = {}
        for i in active:
            st = states[i]
            first, refresh, reorth = optim.schedule(
                st["step"],
                st["refreshes"],
                update_interval=o["update_interval"],
                precond_warmup=o["precond_warmup"],
                reorth_interval=o["reorth_interval"],
                cayley=o["cayley"],
            )
            key = (self._plans[i], str(self._pdtype(i, o)), first, refresh, reorth)
            buckets.setdefault(key, []).append(i)
        directions: dict[int, Array] = {}
        for (plan, _, first, refresh, reorth), idx in buckets.items():
            if plan[0] == "diag":
                for i in idx:
                    directions[i] = self._diag_one(i, gs[i], states[i], first, refresh)
            else:
                directions.update(self._kron_bucket(idx, gs, states, plan, first, refresh, reorth))
        new = list(ps)
        for i in active:
            states[i]["step"] += 1
            new[i] = self._postprocess(i, ps[i], gs[i], directions[i], states[i])
        return new

    def _kron_bucket(
        self,
        idx: list[int],
        gs: list[Array],
        states: list[dict[str, Any]],
        plan: tuple[Any, ...],
        first: bool,
        refresh: bool,
        reorth: bool,
    ) -> dict[int, Array]:
        """Refresh (when due) and precondition a stack of same-shaped layers."""
        xp, o = self._xp, self._opts
        _, r, c, _, _ = plan
        dt = self._pdtype(idx[0], o)
        G = xp.stack([xp.astype(xp.reshape(gs[i], (r, c)), dt) for i in idx])

        def stack(key: str) -> Array | None:
            return xp.stack([states[i][key] for i in idx]) if key in states[idx[0]] else None

        st: Any = kron.KronState(*(stack(k) for k in kron.KronState._fields))
        if first:
            st = optim.first_state(st, G, damping=o["damping"])
        if refresh:
            st, ok = optim.refresh(st, G, **self._refresh_opts())
            for j, i in enumerate(idx):
                states[i]["rejected"] += 0 if bool(ok[j]) else 1
                states[i]["refreshes"] += 1
            if reorth:
                st = optim.reorthonormalize(st)
        for key, val in zip(kron.KronState._fields, st):
            if val is not None:
                for j, i in enumerate(idx):
                    states[i][key] = val[j, ...]
        u = optim.direction(st, G, p=o["p"])
        return {i: xp.reshape(u[j, ...], self._shapes[i]) for j, i in enumerate(idx)}

    def _diag_one(
        self, i: int, g: Array, state: dict[str, Any], first: bool, refresh: bool
    ) -> Array:
        xp, o = self._xp, self._opts
        g = xp.astype(g, self._pdtype(i, o))
        st: Any = diag.DiagState(state["d"])
        if first:
            st = optim.first_state(st, g, damping=o["damping"])
        if refresh:
            st, ok = optim.refresh(st, g, **self._refresh_opts())
            state["rejected"] += 0 if bool(ok) else 1
            state["refreshes"] += 1
        state["d"] = st.d
        return optim.direction(st, g, p=o["p"])

    def _postprocess(
        self, i: int, param: Array, grad: Array, u: Array, state: dict[str, Any]
    ) -> Array:
        """Grafting / clipping, momentum, decoupled weight decay and the parameter update."""
        xp, o = self._xp, self._opts
        if o["graft"] == "adam":
            u, state["exp_avg"], state["exp_avg_sq"] = optim.graft_adam(
                u,
                xp.astype(grad, self._pdtype(i, o)),
                state["exp_avg"],
                state["exp_avg_sq"],
                step=state["step"],
                betas=o["betas"],
                eps=o["eps"],
            )
        if o["max_update_rms"] is not None and math.prod(self._shapes[i]) > 0:
            u = optim.clip_rms(u, o["max_update_rms"])
        if o["momentum"]:
            u = state["momentum_buffer"] = optim.add_momentum(
                state["momentum_buffer"], u, o["momentum"]
            )
        return optim.apply_update(param, u, lr=o["lr"], weight_decay=o["weight_decay"])

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state as NumPy arrays and plain Python values (no pickle needed).

        Format (``FORMAT`` = ``"spectral_curv.numpy.SpectralKron/1"``)::

            {"format": FORMAT,
             "params": {"kind": "dict" | "list" | "tuple", "names": [str, …] | None,
                        "shapes": [[int, …], …], "dtypes": [str, …]},
             "options": {hyperparameter: value, …, "betas": [b1, b2],
                         "precond_dtype": str | None, "nonfinite": str},
             "skipped_steps": int,
             "state": [ {"plan": ["diag"] | ["kron", r, c, diag_r, diag_c],
                         "step": int, "refreshes": int, "rejected": int,
                         "momentum_buffer": ndarray,
                         "d": ndarray                                    (diagonal) |
                         "alpha": 0-d, "d_C", "d_K", ["B_C"], ["B_K"]: ndarray (Kronecker),
                         ["exp_avg", "exp_avg_sq": ndarray]  (graft="adam")}, …]}

        The per-parameter list follows the params' order. Arrays are copies.
        """
        state = []
        for i, s in enumerate(self._states):
            out: dict[str, Any] = {"plan": list(self._plans[i])}
            for k, v in s.items():
                out[k] = int(v) if k in _COUNTERS else np.array(v, copy=True)
            state.append(out)
        return {
            "format": FORMAT,
            "params": {
                "kind": self._kind.__name__,
                "names": None if self._names is None else list(self._names),
                "shapes": [list(s) for s in self._shapes],
                "dtypes": [np.dtype(str(d).split(".")[-1]).name for d in self._dtypes],
            },
            "options": {**_options_to_sd(self._opts), "nonfinite": self.nonfinite},
            "skipped_steps": int(self.skipped_steps),
            "state": state,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Validate and restore :meth:`state_dict` output (arrays may come from ``np.load``).

        Checks the format tag, that the parameters (names, shapes, dtypes) are this
        optimizer's, the options, each parameter's plan and counters, and every array's key,
        shape and dtype; raises a ValueError naming the problem and changes nothing then.
        The options (learning rate included) are restored as saved, as in ``torch.optim``.
        """
        sd = state_dict
        if not isinstance(sd, Mapping) or set(sd) != set(_SD_KEYS):
            got = sorted(sd) if isinstance(sd, Mapping) else type(sd)
            raise ValueError(f"state dict must have the keys {list(_SD_KEYS)}, got {got}")
        if sd["format"] != FORMAT:
            raise ValueError(f"state dict format must be {FORMAT!r}, got {sd['format']!r}")
        mine = self.state_dict()["params"]
        theirs = sd["params"]
        if not isinstance(theirs, Mapping) or set(theirs) != set(mine):
            raise ValueError(f"state dict `params` must have the keys {sorted(mine)}")
        for k in ("kind", "names", "shapes", "dtypes"):
            if _plain(theirs[k]) != mine[k]:
                raise ValueError(
                    f"state dict is for other parameters: `params.{k}` is {theirs[k]!r}, "
                    f"this optimizer has {mine[k]!r}"
                )
        saved = sd["options"]
        want = set(self._opts) | {"nonfinite"}
        if isinstance(saved, Mapping) and set(_LATER_OPTIONS) & (want - set(saved)):
            # a state dict saved before an option existed: that option keeps this optimizer's
            saved = {**{k: self._opts[k] for k in _LATER_OPTIONS if k not in saved}, **saved}
        if not isinstance(saved, Mapping) or set(saved) != want:
            raise ValueError(f"state dict `options` must have the keys {sorted(want)}")
        raw = {k: v for k, v in saved.items() if k != "nonfinite"}
        opts = _check_options(raw)
        if saved["nonfinite"] not in _NONFINITE:
            raise ValueError(f"`nonfinite` must be one of {_NONFINITE}, got {saved['nonfinite']!r}")
        skipped = sd["skipped_steps"]
        if isinstance(skipped, bool) or not isinstance(skipped, numbers.Integral) or skipped < 0:
            raise ValueError(f"state dict `skipped_steps` must be an int >= 0, got {skipped!r}")
        saved_states = sd["state"]
        n = len(self._shapes)
        if not isinstance(saved_states, (list, tuple)) or len(saved_states) != n:
            raise ValueError(f"state dict `state` must be a list of {n} per-parameter dicts")
        new_states = [self._load_one(i, s, opts) for i, s in enumerate(saved_states)]
        plans = [self._plan(i, opts) for i in range(n)]
        # commit
        self._opts = opts
        self.nonfinite = saved["nonfinite"]
        self.skipped_steps = int(skipped)
        self._plans = plans
        self._states = new_states

    def _load_one(self, i: int, saved: Any, opts: dict[str, Any]) -> dict[str, Any]:
        where = f"state dict `state[{i}]` (param {self._label(i)})"
        if not isinstance(saved, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(saved)!r}")
        plan = self._plan(i, opts)
        got_plan = _plain(saved.get("plan"))
        if got_plan != list(plan):
            raise ValueError(f"{where}: plan {got_plan!r} does not match {list(plan)!r}")
        template = self._fresh(i, opts)
        if set(saved) != set(template) | {"plan"}:
            raise ValueError(
                f"{where} must have the keys {sorted(set(template) | {'plan'})}, "
                f"got {sorted(saved)}"
            )
        out: dict[str, Any] = {}
        for k in _COUNTERS:
            v = saved[k]
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"{where}: `{k}` must be an int >= 0, got {v!r}")
            out[k] = int(v)
        if not out["rejected"] <= out["refreshes"] <= out["step"]:
            raise ValueError(f"{where}: counters must satisfy rejected <= refreshes <= step")
        for k, ref in template.items():
            if k in _COUNTERS:
                continue
            v = saved[k]
            if not isinstance(v, (np.ndarray, np.generic)):
                raise ValueError(f"{where}: `{k}` must be a NumPy array, got {type(v)!r}")
            want_dt = np.dtype(str(ref.dtype).split(".")[-1])
            if tuple(v.shape) != tuple(ref.shape) or v.dtype != want_dt:
                raise ValueError(
                    f"{where}: `{k}` must have shape {tuple(ref.shape)} and dtype {want_dt}, "
                    f"got {tuple(v.shape)} {v.dtype}"
                )
            arr = np.array(v, copy=True)
            out[k] = arr if self._is_numpy else self._xp.asarray(arr, device=self._devices[i])
        return out
