"""NumPy adapter: :class:`SpectralKron`, a plain optimizer over a dict or list of arrays.

The math is the core's (math §3 diagonal scheme, §4 Kronecker scheme, §5 damping), reached
only through :mod:`spectral_curv.optim` (schedule, first-step scale, keep-last-good refresh,
re-orthonormalisation, direction, grafting, clipping, momentum, decoupled weight decay);
this module owns storage, routing and control flow, and reproduces
:class:`spectral_curv.torch.SpectralKron` step for step (same options, defaults, schedule,
per-parameter counters, bucketing of same-shaped layers into one batched refresh, and
non-finite policy):

- order ≥ 2: Kronecker ``α S_C ⊗ S_K`` on ``(shape[0], prod(shape[1:]))`` (math §4), a side
  longer than ``max_precond_dim`` kept diagonal;
- order ≤ 1 (biases, scalars) and empty arrays: the diagonal scheme (math §3).

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

import numbers
import warnings
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
_SD_KEYS = ("format", "params", "options", "skipped_steps", "state")
_COUNTERS = ("step", "refreshes", "rejected")

Params = dict[str, Array] | list[Array] | tuple[Array, ...]


# ----------------------------------------------------------------------------- options
def _check_options(opts: Mapping[str, Any]) -> optim.Options:
    """Validated options (``optim.Options``) with Python numbers and a ``np.dtype`` or None."""
    o = optim.Options(**optim.renamed(opts, stacklevel=4))
    floats = {k: float(v) for k, v in o.as_dict().items() if k in _FLOATS and v is not None}
    ints = {k: int(getattr(o, k)) for k in _INTS}
    dt = o.precond_dtype
    if dt is not None:
        try:
            npdt = np.dtype(dt)
        except TypeError:
            npdt = None
        if npdt is None or npdt.kind != "f" or isinstance(dt, bool):
            raise ValueError(f"`precond_dtype` must be a floating numpy dtype or None, got {dt!r}")
        dt = npdt
    betas = (float(o.graft_betas[0]), float(o.graft_betas[1]))
    return o.replace(**floats, **ints, graft_betas=betas, precond_dtype=dt)


_FLOATS = ("lr", "precond_lr", "p", "gamma", "damping", "weight_decay", "graft_eps", "momentum")
_FLOATS += ("tie_tol", "max_step_norm", "max_update_rms")
_INTS = ("update_interval", "max_precond_dim", "precond_warmup", "reorth_interval", "cayley_terms")


def _options_to_sd(o: optim.Options) -> dict[str, Any]:
    out = o.as_dict()
    out["graft_betas"] = list(o.graft_betas)
    out["precond_dtype"] = None if o.precond_dtype is None else o.precond_dtype.name
    return out


def _stack(xp: Namespace, states: list[dict[str, Any]], key: str) -> Array | None:
    return xp.stack([s[key] for s in states]) if key in states[0] else None


def _plain(x: Any) -> Any:
    """Tuples → lists, recursively (a state dict may have been through json or not)."""
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ----------------------------------------------------------------------------- optimizer
class SpectralKron:
    """Kronecker spectral-factorized preconditioner (Lin et al., ICML 2025) for NumPy arrays.

    The engine's step (:mod:`spectral_curv.optim`, math §3–§5) with the options, names
    and defaults of :class:`spectral_curv.optim.Options` (``lr`` and ``precond_lr``
    positionally, the rest by keyword): the same trajectory as the torch optimizer.
    ``params`` (a ``dict`` of name → array, or a list/tuple of real floating arrays of one
    array-API namespace) fixes the structure, shapes and dtypes :meth:`step` accepts. Bad
    hyperparameters raise a ValueError naming the argument; non-array or non-floating
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
        self, params: Params, lr: float = 1e-3, precond_lr: float = 0.1, **options: Any
    ) -> None:
        self._opts = _check_options({"lr": lr, "precond_lr": precond_lr, **options})
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
        return self._opts.as_dict()

    @property
    def nonfinite(self) -> str:
        """What a step does with a NaN/inf gradient (``"raise"`` or ``"skip"``)."""
        return self._opts.nonfinite

    @property
    def lr(self) -> float:
        """The step size; assign to change it (e.g. for a schedule)."""
        return self._opts.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._opts = self._opts.replace(lr=float(optim.Options(lr=value).lr))

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

    def _pdtype(self, i: int, opts: optim.Options) -> Any:
        dt = optim.precond_dtype_for(self._xp, opts.precond_dtype, self._dtypes[i])
        return dt if self._is_numpy else getattr(self._xp, np.dtype(str(dt).split(".")[-1]).name)

    def _plan(self, i: int, opts: optim.Options) -> optim.Plan:
        return optim.plan(self._shapes[i], opts.max_precond_dim)

    def _fresh(self, i: int, opts: optim.Options) -> dict[str, Any]:
        """A new per-parameter state (``S = I``; the first step sets its scale)."""
        xp, shape, dev = self._xp, self._shapes[i], self._devices[i]
        dt = self._pdtype(i, opts)
        pre = optim.init(self._plan(i, opts), shape, dtype=dt, device=dev, xp=xp)
        slots = optim.init_slots(xp, shape, opts, dtype=dt, device=dev)
        st: dict[str, Any] = dict.fromkeys(_COUNTERS, 0)
        for k, v in (*zip(pre._fields, pre), *zip(slots._fields, slots)):
            if v is not None:
                st[k] = v
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
        if not getattr(self, "_warned", False) and sum(s["rejected"] for s in states) > sum(
            s["rejected"] for s in self._states
        ):
            self._warned = True
            warnings.warn(optim.REJECTED_MESSAGE, optim.RejectedRefreshWarning, stacklevel=2)
        self._states = states
        return self._pack(new)

    def _update(
        self, ps: list[Array], gs: list[Array], states: list[dict[str, Any]], active: list[int]
    ) -> list[Array]:
        """The engine's step (``optim.buckets`` → ``precondition_step`` → ``update_param``)."""
        xp, o = self._xp, self._opts
        entries = [
            (self._plans[i], str(self._pdtype(i, o)), states[i]["step"], states[i]["refreshes"])
            for i in active
        ]
        directions: dict[int, Array] = {}
        for key, pos in optim.buckets(entries, o).items():
            idx = [active[j] for j in pos]
            sts = [states[i] for i in idx]
            dt = self._pdtype(idx[0], o)
            if key.plan.kind == "diag":  # elementwise: one parameter at a time, as stored
                pre: list[Any] = [diag.DiagState(s["d"]) for s in sts]
                G = [xp.astype(gs[i], dt) for i in idx]
            else:
                pre = [kron.KronState(*(_stack(xp, sts, k) for k in kron.KronState._fields))]
                G = [xp.stack([xp.astype(xp.reshape(gs[i], key.plan[1:3]), dt) for i in idx])]
            new, oks, us = optim.precondition_step(
                pre, G, first=key.first, refresh=key.refresh, reorth=key.reorth, options=o
            )
            if key.plan.kind == "diag":
                for i, s, st, ok, u in zip(idx, sts, new, oks, us):
                    s["d"], directions[i] = st.d, u
                    s["rejected"] += int(key.refresh and not bool(ok))
            else:
                for j, (i, s) in enumerate(zip(idx, sts)):
                    for k, val in zip(kron.KronState._fields, new[0]):
                        if val is not None:
                            s[k] = val[j, ...]
                    s["rejected"] += int(key.refresh and not bool(oks[0][j]))
                    directions[i] = xp.reshape(us[0][j, ...], self._shapes[i])
            for s in sts:
                s["refreshes"] += int(key.refresh)
        out = list(ps)
        for i in active:
            s = states[i]
            s["step"] += 1
            slots = optim.Slots(*(s.get(k) for k in optim.Slots._fields))
            g = xp.astype(gs[i], self._pdtype(i, o))
            out[i], slots = optim.update_param(
                ps[i], g, directions[i], slots, step=s["step"], options=o
            )
            s.update({k: v for k, v in zip(slots._fields, slots) if v is not None})
        return out

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state as NumPy arrays and plain Python values (no pickle needed).

        Format (``FORMAT`` = ``"spectral_curv.numpy.SpectralKron/1"``)::

            {"format": FORMAT,
             "params": {"kind": "dict" | "list" | "tuple", "names": [str, …] | None,
                        "shapes": [[int, …], …], "dtypes": [str, …]},
             "options": {option: value, …, "graft_betas": [b1, b2],
                         "precond_dtype": str | None},
             "skipped_steps": int,
             "state": [ {"plan": ["diag" | "kron", r, c, diag_r, diag_c],
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
            "options": _options_to_sd(self._opts),
            "skipped_steps": int(self.skipped_steps),
            "state": state,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Validate and restore :meth:`state_dict` output (arrays may come from ``np.load``).

        Checks the format tag, that the parameters (names, shapes, dtypes) are this
        optimizer's, the options, each parameter's plan and counters, every array's key,
        shape and dtype, and the values (``optim.check_precond``: finite, ``d > 0``,
        orthogonal ``B``, ``Π d = 1``); raises a ValueError naming the parameter and the
        field, and changes nothing then.
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
        if not isinstance(saved, Mapping):
            raise ValueError("state dict `options` must be a dict")
        with warnings.catch_warnings():  # a state dict saved before a rename
            warnings.simplefilter("ignore", DeprecationWarning)
            saved = optim.renamed(saved)
        want = set(optim.Options.names())
        # a state dict saved before an option existed: that option keeps this optimizer's
        saved = {**{k: getattr(self._opts, k) for k in _LATER_OPTIONS}, **saved}
        if set(saved) != want:
            raise ValueError(f"state dict `options` must have the keys {sorted(want)}")
        opts = _check_options(saved)
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
        self.skipped_steps = int(skipped)
        self._plans = plans
        self._states = new_states

    def _load_one(self, i: int, saved: Any, opts: optim.Options) -> dict[str, Any]:
        where = f"state dict `state[{i}]` (param {self._label(i)})"
        if not isinstance(saved, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(saved)!r}")
        plan = self._plan(i, opts)
        try:
            got_plan = optim.Plan(*_plain(saved.get("plan")))
        except TypeError:
            got_plan = saved.get("plan")
        if got_plan != plan:
            raise ValueError(f"{where}: plan {saved.get('plan')!r} does not match {list(plan)!r}")
        template = self._fresh(i, opts)
        if set(saved) != set(template) | {"plan"}:
            raise ValueError(
                f"{where} must have the keys {sorted(set(template) | {'plan'})}, "
                f"got {sorted(saved)}"
            )
        out: dict[str, Any] = {}
        for k, ref in template.items():
            v = saved[k]
            if k not in _COUNTERS:
                if not isinstance(v, (np.ndarray, np.generic)):
                    raise ValueError(f"{where}: `{k}` must be a NumPy array, got {type(v)!r}")
                want_dt = np.dtype(str(ref.dtype).split(".")[-1])
                if v.dtype != want_dt:
                    raise ValueError(f"{where}: `{k}` must have dtype {want_dt}, got {v.dtype}")
                v = np.array(v, copy=True)
            out[k] = v
        optim.check_state(out, plan, self._shapes[i], opts, where=where)
        out.update((k, int(out[k])) for k in _COUNTERS)
        if not self._is_numpy:
            for k in out:
                if k not in _COUNTERS:
                    out[k] = self._xp.asarray(out[k], device=self._devices[i])
        return out
