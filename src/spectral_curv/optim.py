"""The optimizer step every adapter shares (torch, optax, NumPy), as pure array-API functions.

math §3–§5 in optimizer form. An adapter owns storage (torch's ``state``, an optax pytree,
a NumPy object), parameter routing and control flow (a Python ``if`` or ``lax.cond`` for a
refresh); every number it computes comes from here, so that the adapters agree to
round-off (``tests/test_cross_framework.py``). Per parameter, with ``t`` its 0-based step:

1. :func:`schedule`: ``first = t == 0``; ``refresh = first or t < precond_warmup or
   t % update_interval == 0``; ``reorth`` on every ``reorth_interval``-th refresh (every
   Cayley mode: exact Cayley is orthogonal only to round-off, which accumulates).
2. ``first``: :func:`first_state` sets ``S₀ = α₀ I``, ``α₀ = mean(G²) + λ`` (diagonal:
   ``d₀ = g² + λ``), so the first step is a scale-free gradient step.
3. ``refresh``: :func:`refresh` (the core's GOP update, keep-last-good where it yields
   non-finite or non-positive factors); ``reorth``: :func:`reorthonormalize`.
4. :func:`direction` ``U = S^{-1/p} G`` with the refreshed factors.
5. :func:`graft_adam` (optional), :func:`clip_rms` (optional), :func:`add_momentum`
   (heavy ball ``m ← μm + U``), :func:`apply_update` (``M ← (1 − lr·wd) M − lr·m``).

Matrix parameters (order ≥ 2, flattened to ``(shape[0], prod(shape[1:]))``) use the
Kronecker scheme, with a side longer than ``max_precond_dim`` kept diagonal; order ≤ 1 the
diagonal scheme (:func:`plan`). Hyperparameters may be Python numbers or 0-d arrays
(traced under ``jax.jit``); options that change the control flow (``cayley``, ``exp``,
``cayley_terms``, …) must be Python values.

Embedding example (an optimizer of your own that preconditions with the spectral factors)::

    >>> import numpy as np
    >>> from spectral_curv import optim
    >>> W, G = np.zeros((4, 3)), np.ones((4, 3))
    >>> pl = optim.plan(W.shape)
    >>> st = optim.init(pl, W.shape, xp=optim.namespace(W))
    >>> st = optim.first_state(st, G, damping=1e-8)
    >>> st, ok = optim.refresh(st, G, precond_lr=0.1)
    >>> U = optim.direction(st, G, p=2)
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import typing
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple, TypeGuard

from . import _array as A
from . import backends, diag, kron, maps
from ._array import Array, Namespace, array_namespace

__all__ = [
    "Plan",
    "Precond",
    "add_momentum",
    "apply_update",
    "check_finite_grads",
    "check_options",
    "clip_rms",
    "direction",
    "first_state",
    "graft_adam",
    "init",
    "lagged",
    "matrix_shape",
    "namespace",
    "plan",
    "refresh",
    "refresh_and_direction",
    "reorthonormalize",
    "schedule",
]


class Plan(NamedTuple):
    """How one parameter is preconditioned: hashable, static (never traced).

    ``kind`` is ``"diag"`` (math §3) or ``"kron"`` (math §4, on the ``rows × cols`` matrix,
    a side flagged ``diag_*`` kept diagonal). A plain tuple such as ``("diag",)`` or
    ``("kron", 4, 6, False, False)`` converts with ``Plan(*t)``.

    Example::

        >>> from spectral_curv import optim
        >>> optim.Plan("kron", 4, 6), optim.Plan(*("diag",)).kind
        (Plan(kind='kron', rows=4, cols=6, diag_rows=False, diag_cols=False), 'diag')
    """

    kind: str
    rows: int = 0
    cols: int = 0
    diag_rows: bool = False
    diag_cols: bool = False


Precond = kron.KronState | diag.DiagState

DEFAULT_MAX_PRECOND_DIM = 4096


#: Grafting choices of every adapter.
GRAFTS = (None, "adam")

#: ``step_scale`` choices: the root-``p`` step at the size of the ``p = 2`` step, or raw.
STEP_SCALES = ("p2", "raw")
EIGENVALUES = ("kron", "corrected")

#: Options with the value a checkpoint saved before the option existed was made with: every
#: adapter loads such a checkpoint in that mode, where the value fixes the state's layout
#: (``eigenvalues``: no ``V``) or the rest of the trajectory (``nesterov``: heavy ball).
BEFORE_OPTION = {"eigenvalues": "kron", "nesterov": False}

# Real options: name -> (zero allowed, None allowed). ``learning_rate`` is optax's ``lr``.
_REAL_OPTIONS = {
    "lr": (True, False),
    "learning_rate": (True, False),
    "precond_lr": (False, False),
    "p": (False, False),
    "gamma": (True, False),
    "damping": (True, False),
    "weight_decay": (True, False),
    "eps": (True, False),
    "graft_eps": (True, False),
    "tie_tol": (True, True),
    "max_step_norm": (False, True),
    "max_update_rms": (False, True),
}
# The largest ``max_step_norm`` the truncated Cayley maps take (the largest measured: soak
# ``quartic_guard05``): at ``‖X‖₂ = 0.5`` one quadratic refresh's ``QᵀQ = I + 4X⁴`` has
# singular values up to 1.12, and Newton–Schulz re-orthonormalisation converges only below
# √3; at 1–2 the basis blew up (drift 4.9 accepted, then non-finite parameters).
_MAX_TRUNCATED_STEP = 0.5

# Integer options: name -> smallest value.
_INT_OPTIONS = {
    "update_interval": 1,
    "max_precond_dim": 1,
    "precond_warmup": 0,
    "reorth_interval": 0,
    "cayley_terms": 0,
}


def _scalar(name: str, v: Any) -> Any:
    """``v`` as a Python value to check, or None when it cannot be checked now (a traced or
    lazy 0-d array, a learning-rate schedule); an array of size ≠ 1 raises."""
    if callable(v) and name in ("lr", "learning_rate"):
        return None
    if hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, numbers.Number):
        if math.prod(v.shape) != 1:
            what = "Tensor lr must be 1-element" if name in ("lr", "learning_rate") else ""
            raise ValueError(
                f"`{name}` must be a real scalar{f' ({what})' if what else ''}, "
                f"got shape {tuple(v.shape)}"
            )
        return _item_if_concrete(v)
    return v


def _item_if_concrete(v: Any) -> Any:
    """``v.item()`` for a 1-element array with a value now, None for a traced one."""
    if not A.is_lazy(v):
        return v.item()
    try:  # e.g. a concrete jax array, which array_api_compat counts as lazy
        return v.item()
    except TypeError:  # traced (jax: ConcretizationTypeError): no value to check yet
        return None


def _real_ok(v: Any, lo_ok: bool) -> bool:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    x = float(v)
    return math.isfinite(x) and (x > 0 or (x == 0 and lo_ok))


def check_options(o: Any) -> None:
    """Raise a ValueError naming the first invalid option among those present in ``o``.

    The options of DESIGN's shared vocabulary (``lr``/``learning_rate``, ``precond_lr``, ``p``,
    ``gamma``, ``damping``, ``momentum``, ``weight_decay``, ``update_interval``, ``cayley``,
    ``cayley_terms``, ``exp``, ``graft``, ``betas``, …) are checked where they are Python or
    eager scalars; traced arrays and learning-rate schedules are accepted unchecked. The
    framework-specific ``precond_dtype`` is left to the adapter. math §3–§5.

    >>> check_options({"precond_lr": 0.1, "cayley": "quadratic"})
    >>> check_options({"p": 0})
    Traceback (most recent call last):
    ...
    ValueError: `p` must be finite and > 0, got 0
    >>> check_options({"momentum": None})  # None only where an option documents it
    Traceback (most recent call last):
    ...
    ValueError: `momentum` must be in [0, 1), got None
    """
    for name, (zero, allow_none) in _REAL_OPTIONS.items():
        if name not in o or (o[name] is None and allow_none):
            continue
        v = _scalar(name, o[name])
        if (o[name] is None or v is not None) and not _real_ok(v, zero):
            bound = ">= 0" if zero else "> 0"
            raise ValueError(f"`{name}` must be finite and {bound}, got {o[name]!r}")
    if "momentum" in o:
        m = _scalar("momentum", o["momentum"])
        if (o["momentum"] is None or m is not None) and not (_real_ok(m, True) and m < 1):
            raise ValueError(f"`momentum` must be in [0, 1), got {o['momentum']!r}")
    if "nesterov" in o and not isinstance(o["nesterov"], bool):
        raise ValueError(f"`nesterov` must be True or False, got {o['nesterov']!r}")
    for name, lo in _INT_OPTIONS.items():
        if name not in o:
            continue
        v = o[name]
        if hasattr(v, "dtype") and not isinstance(v, numbers.Number):
            if getattr(v, "ndim", 1) != 0 or not A.is_integer_dtype(v):
                raise ValueError(f"`{name}` must be an int >= {lo}, got an array of {v.dtype}")
            if (v := _item_if_concrete(v)) is None:  # traced: no value to check yet
                continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ValueError(f"`{name}` must be an int >= {lo}, got {o[name]!r}")
    if "cayley" in o and o["cayley"] not in maps.CAYLEY_MODES:
        raise ValueError(f"`cayley` must be one of {maps.CAYLEY_MODES}, got {o['cayley']!r}")
    if o.get("cayley", "quadratic") != "exact" and "max_step_norm" in o:
        rho = (
            _scalar("max_step_norm", o["max_step_norm"]) if o["max_step_norm"] is not None else None
        )
        if rho is not None and _real_ok(rho, False) and rho > _MAX_TRUNCATED_STEP:
            raise ValueError(
                f"`max_step_norm` must be <= {_MAX_TRUNCATED_STEP} with cayley="
                f"{o.get('cayley', 'quadratic')!r} (a truncated map is orthogonal only for small "
                f"steps: QᵀQ = I + 4X⁴ for the quadratic one), got {o['max_step_norm']!r}"
            )
    if "rotation" in o and o["rotation"] not in maps.ROTATION_MODES:
        raise ValueError(f"`rotation` must be one of {maps.ROTATION_MODES}, got {o['rotation']!r}")
    if "eigenvalues" in o and o["eigenvalues"] not in EIGENVALUES:
        raise ValueError(f"`eigenvalues` must be one of {EIGENVALUES}, got {o['eigenvalues']!r}")
    if "step_scale" in o and o["step_scale"] not in STEP_SCALES:
        raise ValueError(f"`step_scale` must be one of {STEP_SCALES}, got {o['step_scale']!r}")
    if "exp" in o and o["exp"] not in maps.EXP_MODES:
        raise ValueError(f"`exp` must be one of {maps.EXP_MODES}, got {o['exp']!r}")
    if o.get("exp") == "first_order" and "gamma" in o and "precond_lr" in o:
        g = _scalar("gamma", o["gamma"])
        b = _scalar("precond_lr", o["precond_lr"])
        if g is not None and b is not None and float(g) * float(b) >= 1:
            raise ValueError(
                "`precond_lr` times `gamma` must be < 1 with exp='first_order' "
                "(d would not stay > 0)"
            )
    if "graft" in o and o["graft"] not in GRAFTS:
        raise ValueError(f"`graft` must be one of {GRAFTS}, got {o['graft']!r}")
    for key in ("betas", "graft_betas"):
        if key in o:
            _check_betas(key, o[key])


def _check_betas(key: str, b: Any) -> None:
    ok = isinstance(b, (tuple, list)) and len(b) == 2 and all(x is not None for x in b)
    if ok:
        vals = [_scalar(key, x) for x in b]
        ok = all(v is None or (_real_ok(v, True) and v < 1) for v in vals)
    if not ok:
        raise ValueError(f"`{key}` must be two numbers in [0, 1), got {b!r}")


#: Values ``nonfinite`` may take: what a step does with a NaN/inf gradient.
NONFINITE = ("raise", "skip")

#: The ValueError of an eager adapter's step on a NaN/inf gradient with ``nonfinite="raise"``.
NONFINITE_MESSAGE = (
    "SpectralKron: a gradient contains NaN or inf; no state was changed "
    "(pass nonfinite='skip' to skip such steps instead)"
)


@dataclasses.dataclass(frozen=True)
class Options:
    """Every hyperparameter of the spectral optimizers, with its one name and one default.

    The torch, optax and NumPy adapters take exactly these keyword arguments (optax spells
    ``lr`` ``learning_rate``, its convention) and validate them here, once. math §3–§5.

    - ``lr``: step size (a float, or a 0-d array/tensor so that schedules can change it).
    - ``precond_lr``: the factors' step ``β₂`` (the core's ``beta2``).
    - ``p``: matrix root, any real ``p > 0``; default 1.5, SOAP's accuracy on the three
      Fashion-MNIST models of docs/benchmarks_train.md (2: Shampoo/Adam-like whitening;
      1: root-free).
    - ``gamma``: 1 for a moving average (RMSprop-like), 0 for a sum (AdaGrad-like).
    - ``damping``: ``λ``; enters each factor as ``λ Tr(S_other⁻¹)``.
    - ``momentum``: undampened heavy ball ``m ← μm + U`` (the steady step is
      ``lr/(1 − μ)``: ~10× ``lr`` at 0.9). ``nesterov=True``: the step is ``U + μm``
      (Nesterov's look-ahead, as Muon and ``torch.optim.SGD(nesterov=True)``) instead of
      ``m``, with the same steady step; better on minibatch training, worse full-batch
      (docs/benchmarks_train.md, "Nesterov momentum"). ``weight_decay``: decoupled
      (AdamW-style).
    - ``update_interval``, ``precond_warmup``: refresh when ``t % update_interval == 0`` or
      ``t < precond_warmup`` (and at ``t = 0``, which also sets ``S₀ = α₀ I``,
      ``α₀ = mean(G²) + λ``).
    - ``reorth_interval``: one Newton–Schulz step on each ``B`` every this many refreshes
      (0: never).
    - ``cayley``, ``cayley_terms``, ``exp``, ``tie_tol``, ``max_step_norm``, ``rotation``:
      the factor update's modes (:func:`spectral_curv.kron.update_gop`). ``rotation=
      "damped"`` (default) bounds each eigenvector pair's turn where eigenvalues nearly tie;
      ``"paper"`` is the paper's exact rule. ``max_step_norm=None``: the core's guard (0.25 in
      the truncated Cayley maps, none in exact mode); at most 0.5 with a truncated map
      (larger steps are far from orthogonal: ``QᵀQ = I + 4X⁴``).
    - ``eigenvalues``: the step's eigenvalues in the learned eigenbasis. ``"corrected"``
      (default): a per-entry moving average ``V`` of the rotated gradient's squares, refreshed
      with the factors (EKFAC/SOAP's correction: no extra matmul, one more parameter-sized
      buffer; math §4.10); ``"kron"``: the Kronecker factors' ``α d_C ⊗ d_K`` (the paper).
    - ``step_scale``: ``"p2"`` (default) rescales each layer's ``S^{-1/p} G`` to the norm of
      ``S^{-1/2} G``, so that ``lr`` means the same for every root ``p`` (the direction is
      root ``p``'s; computed without overflow for any ``p``; for ``p = 2`` a no-op);
      ``"raw"``: the paper's step ``S^{-1/p} G`` exactly.
    - ``max_update_rms``: cap each layer's preconditioned direction at this RMS before
      momentum (default 3.0: three times the RMS ≈ 1 of a direction whitened by factors
      that match the gradients, so a stale preconditioner meeting a larger gradient cannot
      spike the step; None: off; math §4.9).
    - ``graft``: ``"adam"`` rescales each update to the norm of Adam's, whose constants are
      ``graft_betas`` and ``graft_eps`` (None: off).
    - ``max_precond_dim``: a side longer than this is kept diagonal (O(n) memory).
    - ``precond_dtype``: the factors', momentum's and graft moments' dtype; None: the
      parameter's promoted to at least float32 (:func:`precond_dtype_for`). bfloat16 is
      supported, float16 rejected (its range cannot hold squared gradients).
    - ``nonfinite``: a NaN/inf gradient ``"raise"``-s before any state changes, or
      ``"skip"``-s the whole step (counted).

    Example (defaults; a bad value raises a ValueError that names it)::

        >>> from spectral_curv import optim
        >>> o = optim.Options(lr=0.01)
        >>> o.lr, o.precond_lr, o.rotation, o.eigenvalues, o.precond_dtype
        (0.01, 0.1, 'damped', 'corrected', None)
        >>> o.replace(momentum=0.0).momentum
        0.0
        >>> optim.Options(update_interval=0)
        Traceback (most recent call last):
        ...
        ValueError: `update_interval` must be an int >= 1, got 0
    """

    lr: Any = 1e-3
    precond_lr: Any = 0.1
    p: Any = 1.5
    gamma: Any = 1.0
    damping: Any = 1e-8
    momentum: Any = 0.9
    nesterov: bool = False
    weight_decay: Any = 0.0
    update_interval: Any = 2
    precond_warmup: Any = 10
    reorth_interval: Any = 5
    cayley: str = "quadratic"
    cayley_terms: Any = 1
    exp: str = "first_order"
    tie_tol: Any = None
    max_step_norm: Any = None
    rotation: str = "damped"
    eigenvalues: str = "corrected"
    step_scale: str = "p2"
    max_update_rms: Any = 3.0
    graft: str | None = None
    graft_betas: tuple[Any, Any] = (0.9, 0.999)
    graft_eps: Any = 1e-8
    max_precond_dim: Any = DEFAULT_MAX_PRECOND_DIM
    precond_dtype: Any = None
    nonfinite: str = "raise"

    def __post_init__(self) -> None:
        check_options(self.as_dict())
        check_precond_dtype(self.precond_dtype)
        if self.nonfinite not in NONFINITE:
            raise ValueError(f"`nonfinite` must be one of {NONFINITE}, got {self.nonfinite!r}")
        object.__setattr__(self, "graft_betas", tuple(self.graft_betas))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in signature order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def trusted(cls, values: Mapping[str, Any]) -> Options:
        """Options from a mapping already validated (e.g. a torch param group at every step),
        without checking again; keys other than :meth:`names` are ignored."""
        o = object.__new__(cls)
        for k in _OPTION_NAMES:
            object.__setattr__(o, k, values[k])
        return o

    def as_dict(self) -> dict[str, Any]:
        """``{name: value}`` in signature order."""
        return {k: getattr(self, k) for k in _OPTION_NAMES}

    def replace(self, **changes: Any) -> Options:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def refresh_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`refresh` (the factor update's options)."""
        return {k: getattr(self, k) for k in _REFRESH_NAMES}


_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(Options))

#: Old option names, accepted for one release with a DeprecationWarning.
DEPRECATED_NAMES = {"betas": "graft_betas", "eps": "graft_eps"}


def renamed(options: Mapping[str, Any], *, stacklevel: int = 3) -> dict[str, Any]:
    """``options`` with deprecated names (:data:`DEPRECATED_NAMES`) replaced by the current
    ones, warning once per call; giving both spellings raises a TypeError.

    Example::

        >>> import warnings
        >>> from spectral_curv import optim
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     optim.renamed({"lr": 0.1, "eps": 1e-6})
        {'lr': 0.1, 'graft_eps': 1e-06}
        >>> w[0].category.__name__
        'DeprecationWarning'
    """
    out = dict(options)
    for old, new in DEPRECATED_NAMES.items():
        if old in out:
            if new in out:
                raise TypeError(f"got both `{old}` (deprecated) and `{new}`")
            warnings.warn(
                f"`{old}` is renamed `{new}`; the old name goes in the next release",
                DeprecationWarning,
                stacklevel=stacklevel,
            )
            out[new] = out.pop(old)
    return out


_REFRESH_NAMES = (
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


def check_precond_dtype(dtype: Any) -> None:
    """Raise a ValueError unless ``dtype`` (any framework's, or None) suits the factors.

    float16 is rejected: squared gradients of ordinary size leave its range (6e-5 … 65504)
    and most refreshes would be discarded. bfloat16 has float32's range and is accepted.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> optim.check_precond_dtype(np.float32), optim.check_precond_dtype(None)
        (None, None)
        >>> optim.check_precond_dtype(np.float16)
        Traceback (most recent call last):
        ...
        ValueError: `precond_dtype` float16 is not supported ...
    """
    if dtype is None:
        return
    name = str(getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or dtype)
    name = name.rsplit(".", 1)[-1]
    if name in ("float16", "half"):
        raise ValueError(
            "`precond_dtype` float16 is not supported (range 6e-5 … 65504 cannot hold "
            "squared gradients): use bfloat16 or float32"
        )
    if name not in ("bfloat16", "float32", "float64"):
        raise ValueError(f"`precond_dtype` must be a real floating dtype, got {dtype!r}")


def precond_dtype_for(xp: Namespace, option: Any, param_dtype: Any) -> Any:
    """The factors' dtype for a parameter of ``param_dtype``: ``option``, or (None) the
    parameter's dtype promoted to at least float32.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> xp = optim.namespace(np.zeros(1))
        >>> [str(optim.precond_dtype_for(xp, None, d)) for d in (np.float16, np.float64)]
        ['float32', 'float64']
        >>> str(optim.precond_dtype_for(xp, np.dtype("float32"), np.float64))
        'float32'
    """
    if option is not None:
        return option
    return xp.result_type(param_dtype, xp.float32)


def namespace(*arrays: Array) -> Namespace:
    """The array-API namespace of ``arrays`` (``array_api_compat.array_namespace``).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> xp = optim.namespace(np.zeros(3), np.ones((2, 2)))
        >>> xp.__name__, bool(xp.all(xp.eye(2) == np.eye(2)))
        ('array_api_compat.numpy', True)
    """
    return array_namespace(*arrays)


def plan(shape: tuple[int, ...], max_precond_dim: int = DEFAULT_MAX_PRECOND_DIM) -> Plan:
    """How a parameter of ``shape`` is preconditioned.

    Unit dimensions are dropped first (a ``(1, 16, 64)`` position embedding is a 16×64
    matrix, a ``(1, n)`` or ``(n, 1)`` weight a vector). Then order ≤ 1 or empty:
    ``("diag",)``; otherwise Kronecker on ``(shape[0], prod(shape[1:]))`` with a side
    longer than ``max_precond_dim`` kept diagonal (``B = I``, O(n) memory).

    Example::

        >>> from spectral_curv import optim
        >>> tuple(optim.plan((10,))), tuple(optim.plan((4, 3, 2))), tuple(optim.plan((8, 5000)))
        (('diag', 0, 0, False, False), ('kron', 4, 6, False, False), ('kron', 8, 5000, False, True))
        >>> optim.plan((1, 16, 64)).rows, optim.plan((1, 300)).kind
        (16, 'diag')
    """
    shape = tuple(int(s) for s in shape if int(s) != 1)
    if len(shape) < 2 or math.prod(shape) == 0:
        return Plan("diag")
    r, c = shape[0], math.prod(shape[1:])
    return Plan("kron", r, c, r > max_precond_dim, c > max_precond_dim)


def matrix_shape(pl: Plan, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the preconditioner sees: ``(r, c)`` for Kronecker, ``shape`` for diagonal.

    Example (a 4×3×2 weight is preconditioned as a 4×6 matrix)::

        >>> from spectral_curv import optim
        >>> optim.matrix_shape(optim.plan((4, 3, 2)), (4, 3, 2))
        (4, 6)
        >>> optim.matrix_shape(("diag",), (5,))
        (5,)
    """
    pl = Plan(*pl)
    return tuple(shape) if pl.kind == "diag" else (pl.rows, pl.cols)


def init(
    pl: Plan,
    shape: tuple[int, ...],
    *,
    batch: tuple[int, ...] = (),
    eigenvalues: str = "kron",
    dtype: Any = None,
    device: Any = None,
    xp: Namespace | None = None,
) -> Precond:
    """Fresh factors (``S = I``; :func:`first_state` sets the scale from the first gradient).

    ``batch`` stacks same-shaped parameters (Kronecker only); ``eigenvalues="corrected"``
    adds the per-entry eigenvalues ``V = 1`` (math §4.10).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> st = optim.init(optim.plan((4, 3)), (4, 3), batch=(2,))
        >>> type(st).__name__, st.alpha.tolist(), st.B_C.shape, st.B_K.shape
        ('KronState', [1.0, 1.0], (2, 4, 4), (2, 3, 3))
        >>> optim.init(("diag",), (5,)).d.tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    pl = Plan(*pl)
    if pl.kind == "diag":
        if batch:
            raise ValueError("`batch` is supported for Kronecker plans only")
        return diag.init(tuple(shape), dtype=dtype, device=device, xp=xp)
    st = kron.init(
        pl.rows,
        pl.cols,
        batch=batch,
        diag_rows=pl.diag_rows,
        diag_cols=pl.diag_cols,
        dtype=dtype,
        device=device,
        xp=xp,
    )
    if eigenvalues == "corrected":
        v = st.alpha[..., None, None] * st.d_C[..., :, None] * st.d_K[..., None, :]
        st = st._replace(V=v)
    return st


def schedule(
    step: Any,
    refreshes: Any,
    *,
    update_interval: int,
    precond_warmup: int,
    reorth_interval: int,
    cayley: str,
) -> tuple[Any, Any, Any]:
    """``(first, refresh, reorth)`` for 0-based step ``t`` after ``refreshes`` refreshes.

    Python ints give Python bools; integer arrays (e.g. traced JAX counters) give boolean
    arrays. ``reorth_interval`` may be an int or an integer array (≤ 0: never); it applies
    to every ``cayley`` mode (the argument is kept for callers that pass it).

    Example::

        >>> from spectral_curv import optim
        >>> kw = dict(update_interval=10, precond_warmup=2, reorth_interval=5, cayley="quadratic")
        >>> [optim.schedule(t, 0, **kw) for t in (0, 1, 5, 10)]
        [(True, True, False), (False, True, False), (False, False, False), (False, True, False)]
        >>> optim.schedule(20, 4, **kw)
        (False, True, True)
    """
    first = step == 0
    refresh = first | (step < precond_warmup) | (step % update_interval == 0)
    static = isinstance(reorth_interval, int)
    if static and reorth_interval <= 0:
        return first, refresh, refresh & False
    if static:
        return first, refresh, refresh & ((refreshes + 1) % reorth_interval == 0)
    # an array interval (e.g. traced by optax.inject_hyperparams): off where <= 0
    xp = array_namespace(reorth_interval)
    period = xp.maximum(reorth_interval, xp.ones_like(reorth_interval))
    return first, refresh, refresh & (reorth_interval > 0) & ((refreshes + 1) % period == 0)


def first_state(st: Precond, g: Array, *, damping: Any) -> Precond:
    """``S₀ = α₀ I`` with ``α₀ = mean(G²) + λ`` per stacked layer (diagonal: ``d₀ = g² + λ``).

    ``mean(G²)`` is formed as ``s²·mean((G/s)²)`` with ``s = max|G|`` (no overflow in the
    squares) and clamped to the dtype's largest value, so a huge finite gradient still gives
    a finite step. A value that is 0 (zero gradient with ``λ = 0``: 0·∞ = NaN in the step)
    or non-finite falls back to 1 (diagonal: to the mean of the good entries, or 1).

    Example (``α₀ = mean(G²) + λ``; a zero diagonal entry falls back to the good mean)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> st = optim.init(optim.plan((2, 2)), (2, 2))
        >>> float(optim.first_state(st, np.full((2, 2), 3.0), damping=1.0).alpha)
        10.0
        >>> st = optim.init(("diag",), (3,))
        >>> optim.first_state(st, np.array([1.0, 0.0, 3.0]), damping=0.0).d.tolist()
        [1.0, 5.0, 9.0]
    """
    xp = array_namespace(g)
    if isinstance(st, diag.DiagState):
        sq, big = g * g, float(xp.finfo(g.dtype).max)
        d0 = xp.where(sq > big, big, sq) + damping
        good = xp.isfinite(d0) & (d0 > 0)
        n_good = xp.sum(xp.astype(good, d0.dtype))
        fill = xp.sum(xp.where(good, d0, 0.0)) / xp.maximum(n_good, xp.ones_like(n_good))
        fill = xp.where(xp.isfinite(fill) & (fill > 0), fill, 1.0)
        return diag.DiagState(xp.where(good, d0, fill))
    # mean(G²) as s²·mean((G/s)²), s = max|G|: no overflow in the squares or the sum; an α₀
    # beyond the dtype's range is clamped to its largest value (the step stays finite).
    s = xp.max(xp.abs(g), axis=(-2, -1))
    s = xp.where(xp.isfinite(s) & (s > 0), s, xp.ones_like(s))
    gs = g / s[..., None, None]
    big = float(xp.finfo(g.dtype).max)
    a0 = s * (s * xp.mean(gs * gs, axis=(-2, -1)))
    a0 = xp.where(a0 > big, big, a0) + damping
    a0 = xp.where(xp.isfinite(a0) & (a0 > 0), a0, 1.0)
    if st.V is not None:  # math §4.10: V₀ = α₀, the diagonal of S₀ = α₀ I
        return st._replace(alpha=a0, V=a0[..., None, None] + xp.zeros_like(st.V))
    return st._replace(alpha=a0)


def _select(xp: Namespace, ok: Array, new: Array | None, old: Array | None) -> Array | None:
    if new is None or old is None:
        return new
    return xp.where(xp.reshape(ok, (*ok.shape, *([1] * (new.ndim - ok.ndim)))), new, old)


def refresh(
    st: Precond,
    g: Array,
    *,
    precond_lr: Any,
    gamma: Any = 1.0,
    damping: Any = 0.0,
    cayley: str = "quadratic",
    exp: str = "first_order",
    cayley_terms: int = 1,
    tie_tol: float | None = None,
    max_step_norm: float | None = None,
    rotation: str | None = None,
    rotated: Array | None = None,
) -> tuple[Precond, Array]:
    """The core's GOP update (``kron.update_gop`` / ``diag.update_gop``) with keep-last-good.

    Returns ``(state, ok)``: ``ok`` (one flag per stacked layer; for the diagonal scheme one
    per entry of ``d``) is False where the update gave non-finite or non-positive factors, or
    a basis column whose squared norm is off 1 by more than :func:`orthogonality_tol` (an
    exploding or ill-conditioned rotation: an orthogonal matrix has unit columns), which are
    then left as they were.
    ``rotated``: ``kron.rotate(st, g)`` where the caller has formed it (Kronecker states).

    Example (a good update is kept; a non-finite gradient leaves the factors as they were)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> st0 = optim.init(optim.plan((4, 3)), (4, 3))
        >>> st, ok = optim.refresh(st0, np.arange(12.0).reshape(4, 3) / 10, precond_lr=0.1)
        >>> bool(ok), bool(np.allclose(st.B_C.T @ st.B_C, np.eye(4), atol=0.02))  # ≤ 4·0.25⁴
        (True, True)
        >>> with np.errstate(all="ignore"):
        ...     st, ok = optim.refresh(st0, np.full((4, 3), np.inf), precond_lr=0.1)
        >>> bool(ok), bool(np.array_equal(st.B_C, st0.B_C)), float(st.alpha)
        (False, True, 1.0)
    """
    xp = array_namespace(g)
    if isinstance(st, diag.DiagState):
        new = diag.update_gop(
            st, g, beta2=precond_lr, gamma=gamma, damping=damping, exp=exp, check=False
        )
        # per entry (the scheme is elementwise): a parameter's refresh does not depend on
        # what shares its bucket (torch concatenates a group's vectors)
        ok = xp.isfinite(new.d) & (new.d > 0)
        return (new if A.known_all(xp, ok) else diag.DiagState(xp.where(ok, new.d, st.d))), ok
    kw = dict(gamma=gamma, damping=damping, cayley=cayley, exp=exp, cayley_terms=cayley_terms)
    kw.update(tie_tol=tie_tol, max_step_norm=max_step_norm, rotation=rotation)
    r = kron.rotate(st, g) if rotated is None else rotated
    return _keep_good(xp, st, kron.update_rotated(st, r, beta2=precond_lr, **kw))


def lagged(st: Precond) -> TypeGuard[kron.KronState]:
    """Whether ``st``'s step follows its refresh in the lagged order (math §4.10): a
    Kronecker state with corrected eigenvalues (``V``).

    Example::

        >>> from spectral_curv import optim
        >>> pl = optim.plan((4, 3))
        >>> optim.lagged(optim.init(pl, (4, 3), eigenvalues="corrected")), optim.lagged(
        ...     optim.init(pl, (4, 3), eigenvalues="kron"))
        (True, False)
    """
    return isinstance(st, kron.KronState) and st.V is not None


def refresh_and_direction(
    st: Precond, g: Array, *, p: Any, norm_p: Any = None, **refresh_kwargs: Any
) -> tuple[Precond, Array, Array]:
    """:func:`refresh`, and the step's direction: ``(state, ok, direction)``.

    With corrected eigenvalues (:func:`lagged`) the step is taken in the basis before the
    refresh, with the refreshed ``V`` (``kron.lagged``, math §4.10), and shares the refresh's
    ``R = B_CᵀGB_K``: 2 products fewer than :func:`direction` with the new factors, which
    the other states use. ``refresh_kwargs`` are :func:`refresh`'s.

    Example (the first refresh from ``S₀ = α₀ I``: the step is ``G / √V``)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> pl, G = optim.plan((4, 3)), np.arange(12.0).reshape(4, 3) / 10
        >>> st = optim.first_state(optim.init(pl, (4, 3), eigenvalues="corrected"), G, damping=0)
        >>> new, ok, u = optim.refresh_and_direction(st, G, p=2, precond_lr=0.1)
        >>> bool(ok), bool(np.allclose(u, G / np.sqrt(new.V)))
        (True, True)
    """
    if not lagged(st):
        new, ok = refresh(st, g, **refresh_kwargs)
        return new, ok, direction(new, g, p=p, norm_p=norm_p)
    r = kron.rotate(st, g)
    newk, ok = _refresh_kron(st, g, rotated=r, **refresh_kwargs)
    return newk, ok, kron.precondition_rotated(kron.lagged(st, newk), r, p=p, norm_p=norm_p)


def _refresh_kron(st: kron.KronState, g: Array, **kw: Any) -> tuple[kron.KronState, Array]:
    """:func:`refresh` of a Kronecker state, typed as one."""
    new, ok = refresh(st, g, **kw)
    assert isinstance(new, kron.KronState)
    return new, ok


def _keep_good(xp: Namespace, st: kron.KronState, newk: kron.KronState) -> tuple[Precond, Array]:
    """``newk`` where its factors are valid, else ``st`` (per stacked layer), and the flags."""
    # α, d_C, d_K finite and > 0, per layer (NaN propagates through min/max: rejected)
    ad = xp.concat([newk.alpha[..., None], newk.d_C, newk.d_K], axis=-1)
    ok = (xp.min(ad, axis=-1) > 0) & (xp.max(ad, axis=-1) < math.inf)
    for b in (newk.B_C, newk.B_K):
        if b is not None:  # unit columns, as any orthogonal matrix has (the diagonal of BᵀB,
            # O(n²)), within the checkpoint's orthogonality_tol, so a refresh never accepts a
            # basis its own checkpoint would refuse (an ill-conditioned exact solve gave
            # ‖BᵀB − I‖ ≈ 1 with every |B_ij| ≤ 1.25); NaN/inf propagate: rejected
            tol = orthogonality_tol(A.eps(xp, b.dtype), b.shape[-1])
            dev = xp.max(xp.abs(xp.sum(b * b, axis=-2) - 1.0), axis=-1)
            ok = ok & (dev <= tol)
    if A.known_all(xp, ok):  # nothing to select (the usual case)
        return newk, ok
    return kron.KronState(*(_select(xp, ok, n, o) for n, o in zip(newk, st))), ok


class RejectedRefreshWarning(UserWarning):
    """A preconditioner refresh was rejected (non-finite or non-positive factors, an exploding
    rotation, a singular solve): the last good factors were kept. Adapters warn once per
    optimizer; the per-parameter ``rejected`` counters say how often."""


REJECTED_MESSAGE = (
    "a preconditioner refresh was rejected (non-finite or non-positive factors, an exploding "
    "rotation or a failed solve) and the last good factors kept; see the `rejected` counters "
    "(warned once per optimizer). Frequent rejections mean the learning rate or precond_lr "
    "is too large for the curvature."
)


def warn_rejected_once(warned: bool, seen: Any, now: Any, *, stacklevel: int = 2) -> bool:
    """Give :data:`REJECTED_MESSAGE` as a :class:`RejectedRefreshWarning` if the total of the
    ``rejected`` counters grew from ``seen`` to ``now`` and the optimizer has not ``warned``
    yet; returns the new ``warned`` flag. ``stacklevel`` counts from the caller (2: its caller).

    Example::

        >>> import warnings
        >>> from spectral_curv import optim
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     flags = [optim.warn_rejected_once(f, s, n) for f, s, n in
        ...              [(False, 0, 0), (False, 0, 2), (True, 2, 3)]]
        >>> flags, [x.category.__name__ for x in w]
        ([False, True, True], ['RejectedRefreshWarning'])
    """
    if warned or not now > seen:
        return warned
    warnings.warn(REJECTED_MESSAGE, RejectedRefreshWarning, stacklevel=stacklevel + 1)
    return True


def _numerical_failure(e: BaseException) -> bool:
    """Whether ``e`` is a numerical failure of a refresh (singular solve, overflow) rather
    than a bug: such a refresh is rejected like one with non-finite factors."""
    names = {c.__name__ for c in type(e).__mro__}
    return isinstance(e, ArithmeticError) or bool(names & {"LinAlgError", "_LinAlgError"})


_refresh_fn = refresh  # for callers whose argument is named `refresh`


def reorthonormalize(st: Precond) -> Precond:
    """One Newton–Schulz polar step on each factor basis (``maps.orthonormalize``), undoing the
    drift of the truncated Cayley maps; a no-op for the diagonal scheme.

    Example (one Newton–Schulz step squares a basis' small orthogonality drift)::

        >>> import numpy as np
        >>> from spectral_curv import kron, maps, optim
        >>> b = 1.001 * maps.cayley(maps.skew(np.tril(np.full((3, 3), 0.1), -1)))
        >>> drift = lambda b: float(np.abs(b.T @ b - np.eye(3)).max())
        >>> st = optim.reorthonormalize(kron.init(3, 2)._replace(B_C=b))
        >>> round(drift(b), 4), bool(drift(st.B_C) < drift(b) ** 2)
        (0.002, True)
    """
    if isinstance(st, diag.DiagState):
        return st
    return st._replace(
        B_C=None if st.B_C is None else maps.orthonormalize(st.B_C),
        B_K=None if st.B_K is None else maps.orthonormalize(st.B_K),
    )


def direction(st: Precond, g: Array, *, p: Any, norm_p: Any = None) -> Array:
    """``U = S^{-1/p} G`` (Kronecker: rotated form, 4 matmuls; diagonal: ``d^{-1/p} ⊙ g``);
    with ``norm_p`` rescaled per layer to the norm of ``S^{-1/norm_p} G`` (``step_scale``).

    Example (``S = 4 I`` on both schemes, ``p = 2``: the step halves ``G``)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> st = optim.init(optim.plan((2, 3)), (2, 3))
        >>> st = optim.first_state(st, np.full((2, 3), 2.0), damping=0.0)
        >>> optim.direction(st, np.ones((2, 3)), p=2).tolist()
        [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
        >>> st = optim.init(("diag",), (2,))._replace(d=np.array([4.0, 16.0]))
        >>> optim.direction(st, np.ones(2), p=2).tolist()
        [0.5, 0.25]
    """
    if isinstance(st, diag.DiagState):
        return diag.precondition(st, g, p=p, norm_p=norm_p, check=False)
    return kron.precondition(st, g, p=p, norm_p=norm_p, check=False)


def segment_direction(
    d: Array, g: Array, sizes: Sequence[int], *, p: Any, ref: Array | None = None
) -> Array:
    """:func:`direction` with ``norm_p=2`` on each slice of a concatenated diagonal bucket:
    per segment of ``sizes`` (one parameter each), ``d^{-1/p} ⊙ g`` rescaled to the 2-norm of
    ``d^{-1/2} ⊙ g`` (math §3, §4.8). ``ref``, that ``p = 2`` step if already formed, lets a
    fast path skip forming it (torch: a fixed number of kernels for any number of segments).

    Example (two segments; each has the size of its own ``p = 2`` step)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> u = optim.segment_direction(np.array([4.0, 1.0, 16.0]), np.ones(3), [2, 1], p=1.0)
        >>> [round(float(x), 4) for x in u]  # (1/4, 1)·|(1/2, 1)|/|(1/4, 1)|, then 1/4
        [0.2712, 1.0847, 0.25]
    """
    xp = array_namespace(d, g)
    impl = backends.lookup("segment_direction", xp)
    if impl is not None:
        return impl(d, g, list(sizes), p, ref)
    ends = [0, *itertools.accumulate(sizes)]
    parts = [
        direction(diag.DiagState(d[a:b]), g[a:b], p=p, norm_p=2.0)
        for a, b in itertools.pairwise(ends)
    ]
    return xp.concat(parts) if parts else g


def update_params(
    params: Sequence[Array],
    grads: Sequence[Array],
    us: Sequence[Array],
    slots: Sequence[Slots],
    *,
    steps: Sequence[int],
    options: Options,
) -> tuple[list[Array], list[Slots]]:
    """:func:`update_param` for each parameter (``steps``: 1-based step counts); ``grads[i]``
    in ``us[i]``'s dtype; the inputs are not changed. A fast path forms the step of many
    parameters at once (torch: a few ``torch._foreach_*`` kernels where it is RMS clipping,
    momentum and decay). math §4.7.

    Example (no momentum: ``M − lr·U`` for each parameter)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> o = optim.Options(lr=0.5, momentum=0.0)
        >>> ws, _ = optim.update_params([np.ones(2), np.zeros(1)], [np.ones(2), np.ones(1)],
        ...                             [np.ones(2), np.ones(1)], [optim.Slots(np.zeros(2)),
        ...                             optim.Slots(np.zeros(1))], steps=[1, 1], options=o)
        >>> [w.tolist() for w in ws]
        [[0.5, 0.5], [-0.5]]
    """
    if params:
        impl = backends.lookup("update_params", array_namespace(*params))
        if impl is not None:
            return impl(list(params), list(grads), list(us), list(slots), list(steps), options)
    out = [
        update_param(prm, g, u, sl, step=t, options=options)
        for prm, g, u, sl, t in zip(params, grads, us, slots, steps)
    ]
    return [w for w, _ in out], [sl for _, sl in out]


def step_norm_p(step_scale: str) -> float | None:
    """The ``norm_p`` of :func:`direction` for the option ``step_scale``: ``"p2"`` rescales
    the root-``p`` step to the norm of the root-2 step (2.0), ``"raw"`` leaves it (None).

    Example::

        >>> from spectral_curv import optim
        >>> optim.step_norm_p("p2"), optim.step_norm_p("raw")
        (2.0, None)
    """
    return 2.0 if step_scale == "p2" else None


def _norm(xp: Namespace, x: Array) -> Array:
    return xp.sqrt(xp.sum(x * x))


def graft_adam(
    u: Array,
    g: Array,
    exp_avg: Array,
    exp_avg_sq: Array,
    *,
    step: Any,
    betas: tuple[Any, Any],
    eps: Any,
) -> tuple[Array, Array, Array]:
    """Rescale ``U`` to the norm of Adam's update at 1-based ``step``; returns
    ``(U, exp_avg, exp_avg_sq)`` with Adam's moments of the raw gradient advanced.

    Example (at step 1 Adam's update is ``g/(|g| + eps)``, so ``U`` gets its norm ``√n``)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> g, u = np.array([3.0, -4.0, 1.0, 2.0]), np.array([10.0, 0.0, 0.0, 0.0])
        >>> z = np.zeros(4)
        >>> v, m, s = optim.graft_adam(u, g, z, z, step=1, betas=(0.9, 0.999), eps=0.0)
        >>> v.tolist(), bool(np.allclose(m, 0.1 * g)), bool(np.allclose(s, 0.001 * g**2))
        ([2.0, 0.0, 0.0, 0.0], True, True)
    """
    xp = array_namespace(u, g)
    b1, b2 = betas
    exp_avg = exp_avg + (1 - b1) * (g - exp_avg)
    exp_avg_sq = b2 * exp_avg_sq + (1 - b2) * (g * g)
    adam = (exp_avg / (1 - b1**step)) / (xp.sqrt(exp_avg_sq / (1 - b2**step)) + eps)
    # U/‖U‖ from entries scaled by their largest magnitude (no square overflows, no ratio
    # ‖adam‖/‖U‖ overflows for a tiny U); a zero U stays zero (it was 0·inf = NaN)
    big = xp.max(xp.abs(u)) if math.prod(u.shape) else xp.asarray(0.0, dtype=u.dtype)
    safe = xp.where(big > 0, big, xp.ones_like(big))
    unit = u / safe
    n_unit = _norm(xp, unit)
    unit = unit / xp.where(n_unit > 0, n_unit, xp.ones_like(n_unit))
    return unit * _norm(xp, adam), exp_avg, exp_avg_sq


def clip_rms(u: Array, max_rms: Any) -> Array:
    """``U · max_rms / max(rms(U), max_rms)``: the update's RMS capped at ``max_rms``.

    Example (an RMS of 3 is capped at 1; an RMS under the cap passes unchanged)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> optim.clip_rms(np.full(4, 3.0), 1.0).tolist()
        [1.0, 1.0, 1.0, 1.0]
        >>> optim.clip_rms(np.full(4, 0.5), 1.0).tolist()
        [0.5, 0.5, 0.5, 0.5]
    """
    xp = array_namespace(u)
    if math.prod(u.shape) == 0:  # nothing to clip (and no largest entry)
        return u
    rms = xp.sqrt(xp.mean(u * u))
    # a finite update whose squares overflow: its RMS from the entries scaled by the largest
    big = xp.max(xp.abs(u))
    scaled = big * xp.sqrt(xp.mean((u / xp.where(big > 0, big, 1.0)) ** 2))
    rms = xp.where(xp.isfinite(rms), rms, scaled)
    return u * (max_rms / xp.maximum(rms, xp.asarray(max_rms, dtype=u.dtype)))


def add_momentum(buf: Array, u: Array, momentum: Any) -> Array:
    """Heavy-ball (undampened) momentum ``m ← μ m + U``; returns the new ``m``.

    Example (two unit updates: ``m = 1``, then ``0.9·1 + 1``)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> m = optim.add_momentum(np.zeros(2), np.ones(2), 0.9)
        >>> optim.add_momentum(m, np.ones(2), 0.9).tolist()
        [1.9, 1.9]
    """
    return momentum * buf + u


def momentum_step(buf: Array, u: Array, momentum: Any, *, nesterov: bool) -> tuple[Array, Array]:
    """:func:`add_momentum`, and the direction a step takes with it: ``m`` itself, or with
    ``nesterov`` the look-ahead ``U + μm`` (math §4.7). Returns ``(m, direction)``.

    Example (one unit update from ``m = 1``, μ = 0.9)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> m, v = optim.momentum_step(np.ones(1), np.ones(1), 0.9, nesterov=True)
        >>> [round(float(m[0]), 5), round(float(v[0]), 5)]  # 1.9, then 1 + 0.9·1.9
        [1.9, 2.71]
    """
    m = add_momentum(buf, u, momentum)
    return m, (u + momentum * m if nesterov else m)


def apply_update(param: Array, u: Array, *, lr: Any, weight_decay: Any = 0.0) -> Array:
    """Decoupled weight decay and the step: ``M ← (1 − lr·wd) M − lr·U`` in ``param``'s dtype.

    Example (``(1 − 0.1·0.5)·2 − 0.1·1 = 1.8``; the parameter's dtype is kept)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> w = np.full(2, 2.0, dtype=np.float32)
        >>> w = optim.apply_update(w, np.ones(2), lr=0.1, weight_decay=0.5)
        >>> [round(float(x), 6) for x in w], w.dtype
        ([1.8, 1.8], dtype('float32'))
    """
    xp = array_namespace(param)
    decayed = xp.astype(param * (1 - lr * weight_decay), param.dtype)
    return decayed - xp.astype(u * lr, param.dtype)


def all_grads_finite(xp: Namespace, grads: Sequence[Array]) -> Array:
    """A 0-d boolean array: every gradient is finite. No host sync, so it works under
    ``jax.jit`` (optax keeps the state and zeroes the update where it is False);
    :func:`check_finite_grads` is its Python bool.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> xp = optim.namespace(np.zeros(1))
        >>> ok = optim.all_grads_finite(xp, [np.ones(2), np.array([np.inf])])
        >>> ok.shape, bool(ok), bool(optim.all_grads_finite(xp, []))
        ((), False, True)
    """
    if not grads:
        return xp.asarray(True)
    ok = xp.all(xp.isfinite(grads[0]))
    for g in grads[1:]:
        ok = ok & xp.all(xp.isfinite(g))
    return ok


def check_finite_grads(xp: Namespace, grads: list[Array]) -> bool:
    """True when every gradient is finite (one host sync for the whole list).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> xp = optim.namespace(np.zeros(1))
        >>> optim.check_finite_grads(xp, [np.ones(2), np.zeros((2, 2))])
        True
        >>> optim.check_finite_grads(xp, [np.ones(2), np.array([np.nan])])
        False
        >>> optim.check_finite_grads(xp, [])
        True
    """
    return bool(all_grads_finite(xp, grads)) if grads else True


# ----------------------------------------------------------------------------- the engine
# The one place that sequences a step. Adapters own storage (torch's ``state``, an optax
# pytree, NumPy dicts) and pass their control flow in as ``cond``.


def python_cond(
    pred: Any, true_fn: Callable[[Any], Any], false_fn: Callable[[Any], Any], x: Any
) -> Any:
    """``true_fn(x) if pred else false_fn(x)``: the eager adapters' ``cond`` (optax passes
    ``jax.lax.cond``, which has the same signature).

    Example::

        >>> from spectral_curv import optim
        >>> optim.python_cond(True, lambda x: x + 1, lambda x: x, 1)
        2
    """
    return true_fn(x) if pred else false_fn(x)


class BucketKey(NamedTuple):
    """What parameters must share to be stepped together: plan, a storage key chosen by
    the adapter (device, dtype), and the schedule's three flags."""

    plan: Plan
    storage: Hashable
    first: bool
    refresh: bool
    reorth: bool


def buckets(
    entries: Sequence[tuple[Plan, Hashable, int, int]], options: Options
) -> dict[BucketKey, list[int]]:
    """Group parameters for one step: ``entries[i] = (plan, storage, step, refreshes)`` with
    Python-int counters; returns ``{key: [i, …]}`` in first-seen order (math §4.7 schedule).

    Example (two same-shaped matrices on their first step, a vector refreshed later)::

        >>> from spectral_curv import optim
        >>> o = optim.Options()
        >>> pk, pd = optim.plan((4, 3)), optim.plan((3,))
        >>> b = optim.buckets([(pk, "cpu", 0, 0), (pk, "cpu", 0, 0), (pd, "cpu", 12, 11)], o)
        >>> [(k.plan.kind, k.first, k.refresh, v) for k, v in b.items()]
        [('kron', True, True, [0, 1]), ('diag', False, True, [2])]
    """
    out: dict[BucketKey, list[int]] = {}
    for i, (pl, storage, step, refreshes) in enumerate(entries):
        flags = schedule(
            step,
            refreshes,
            update_interval=options.update_interval,
            precond_warmup=options.precond_warmup,
            reorth_interval=options.reorth_interval,
            cayley=options.cayley,
        )
        out.setdefault(BucketKey(Plan(*pl), storage, *flags), []).append(i)
    return out


def _cast_like(xp: Namespace, new: Any, old: Any) -> Any:
    """``new`` (a factor state) with the dtypes of ``old``: keeps both branches of a
    ``lax.cond`` alike and the stored state's dtype stable."""
    vals = [
        n if n is None or n.dtype == o.dtype else xp.astype(n, o.dtype) for n, o in zip(new, old)
    ]
    return type(old)(*vals)


def _accepted(xp: Namespace, st: Precond) -> Array:
    """All-True ``ok`` flags shaped like :func:`refresh`'s for ``st`` (no refresh ran)."""
    ref = st.d if isinstance(st, diag.DiagState) else st.alpha
    return xp.ones(tuple(ref.shape), dtype=xp.bool, device=A.device(ref))


def precondition_step(
    states: Sequence[Precond],
    grads: Sequence[Array],
    *,
    first: Any,
    refresh: Any,
    reorth: Any,
    options: Options,
    cond: Callable[..., Any] = python_cond,
) -> tuple[list[Precond], list[Array], list[Array]]:
    """The preconditioner part of a step for several buckets that share the schedule's flags:
    :func:`first_state` on the first step, :func:`refresh` (keep-last-good) and
    :func:`reorthonormalize` when due, then :func:`direction` with the new factors; with
    corrected eigenvalues the direction comes with the refresh, in the basis before it
    (:func:`refresh_and_direction`, math §4.10).

    ``states[k]``/``grads[k]``: a (stacked) Kronecker state with its ``(…, r, c)`` gradient,
    or a diagonal state with its gradient, in the factors' dtype. ``cond`` decides each flag:
    :func:`python_cond` for Python bools, ``jax.lax.cond`` for traced ones (one ``cond`` per
    flag for all buckets). Returns ``(states, ok, directions)``; ``ok[k]`` is False for each
    stacked layer (diagonal: each entry) whose refresh was rejected (all True when none ran).
    math §3–§5.

    Example (one 4×3 layer on its first step: a refresh ran and was kept)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> pl = optim.plan((4, 3))
        >>> st = optim.init(pl, (4, 3), batch=(1,))
        >>> G = np.arange(12.0).reshape(1, 4, 3) / 10
        >>> sts, oks, us = optim.precondition_step(
        ...     [st], [G], first=True, refresh=True, reorth=False, options=optim.Options())
        >>> oks[0].tolist(), us[0].shape
        ([True], (1, 4, 3))
    """
    if not grads:
        return [], [], []
    grads = list(grads)
    xp = array_namespace(*grads)
    kw = options.refresh_kwargs()

    def first_all(ss: list) -> list:
        return [
            _cast_like(xp, first_state(s, g, damping=options.damping), s) for s, g in zip(ss, grads)
        ]

    norm_p = step_norm_p(options.step_scale)

    def step_dir(s: Precond, g: Array) -> Array:
        return direction(s, g, p=options.p, norm_p=norm_p)

    def refresh_one(s: Precond, g: Array) -> tuple[Precond, Array, Array | None]:
        # a lagged state's direction comes with its refresh; the others' after reorth
        def run() -> tuple[Precond, Array, Array | None]:
            if lagged(s):
                return refresh_and_direction(s, g, p=options.p, norm_p=norm_p, **kw)
            return (*_refresh_fn(s, g, **kw), None)

        if cond is not python_cond:  # traced: failures show as non-finite values
            return run()
        try:
            return run()
        except Exception as e:  # a singular solve etc.: a rejected refresh, never an error
            if not _numerical_failure(e):
                raise
            return s, ~_accepted(xp, s), step_dir(s, g) if lagged(s) else None

    def refresh_all(ss: list) -> tuple[list, list, list]:
        new = [refresh_one(s, g) for s, g in zip(ss, grads)]
        return (
            [_cast_like(xp, n, s) for (n, _, _), s in zip(new, ss)],
            [ok for _, ok, _ in new],
            [u for _, _, u in new],
        )

    def keep(ss: list) -> tuple[list, list, list]:
        dirs = [step_dir(s, g) if lagged(s) else None for s, g in zip(ss, grads)]
        return ss, [_accepted(xp, s) for s in ss], dirs

    def reorth_all(ss: list) -> list:
        return [_cast_like(xp, reorthonormalize(s), s) for s in ss]

    def same(ss: list) -> list:
        return ss

    new = cond(first, first_all, same, list(states))
    new, oks, dirs = cond(refresh, refresh_all, keep, new)
    new = cond(reorth, reorth_all, same, new)
    dirs = [step_dir(s, g) if u is None else u for s, g, u in zip(new, grads, dirs)]
    return new, oks, dirs


class BucketStep(NamedTuple):
    """What :func:`bucket_step` gives per parameter of a bucket: its new factor state (a view
    of the bucket's stacked or concatenated result), its direction in its gradient's shape,
    and ``rejected``: an int64 vector, 1 for each parameter whose refresh keep-last-good
    discarded, or None when none was (no refresh ran, or all are known to be kept)."""

    states: list[Precond]
    directions: list[Array]
    rejected: Array | None


def _segment_any(xp: Namespace, flags: Array, sizes: Sequence[int]) -> Array:
    """Per segment of ``sizes`` (zero sizes allowed): 1 where any flag is set (int64)."""
    counts = xp.cumulative_sum(xp.astype(flags, xp.int64), include_initial=True)
    ends = list(itertools.accumulate(sizes))
    take = xp.asarray([0, *ends], device=A.device(flags))
    c = xp.take(counts, take)
    return xp.astype(c[1:] > c[:-1], xp.int64)


def bucket_step(
    states: Sequence[Precond], grads: Sequence[Array], key: BucketKey, options: Options
) -> BucketStep:
    """One eager step of the preconditioner for a bucket of :func:`buckets` (Python flags):
    same-plan Kronecker layers stacked into one batched :func:`precondition_step`; diagonal
    parameters concatenated into one vector (elementwise math; the first step, a
    per-parameter mean, one at a time), each parameter's ``step_scale="p2"`` size from its
    own slice (:func:`segment_direction`). ``grads[i]`` has ``params[i]``'s shape and is
    cast to the factors' dtype. math §3–§5.

    Example (two same-shaped layers in one batched refresh)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> o, pl = optim.Options(), optim.plan((4, 3))
        >>> (key, idx), = optim.buckets([(pl, "cpu", 0, 0), (pl, "cpu", 0, 0)], o).items()
        >>> res = optim.bucket_step([optim.init(pl, (4, 3))] * 2,
        ...                         [np.ones((4, 3)), np.eye(4, 3)], key, o)
        >>> [u.shape for u in res.directions], res.rejected
        ([(4, 3), (4, 3)], None)
    """
    pl, n = Plan(*key.plan), len(grads)
    dss = [s for s in states if isinstance(s, diag.DiagState)]  # all of them, or none
    if dss and key.first and n > 1:
        parts = [bucket_step([s], [g], key, options) for s, g in zip(states, grads)]
        rej = None
        if any(r.rejected is not None for r in parts):
            xp = array_namespace(dss[0].d)
            zero = xp.zeros(1, dtype=xp.int64, device=A.device(dss[0].d))
            rej = xp.concat([zero if r.rejected is None else r.rejected for r in parts])
        return BucketStep([r.states[0] for r in parts], [r.directions[0] for r in parts], rej)
    ref = dss[0].d if dss else typing.cast(kron.KronState, states[0]).alpha
    xp, dt = array_namespace(ref), ref.dtype
    shapes = [tuple(g.shape) for g in grads]

    def shaped(x: Array, shape: tuple[int, ...]) -> Array:  # no call when it has the shape
        return x if tuple(x.shape) == shape else xp.reshape(x, shape)

    gs = [g if g.dtype == dt else xp.astype(g, dt) for g in grads]
    # a p ≠ 2 step at the p = 2 step's size: per parameter, not per bucket (the engine gives
    # the bucket's raw p = 2 step; its p then only shapes the direction)
    own_norm = pl.kind == "diag" and options.step_scale == "p2" and options.p != 2 and n > 1
    sizes = [math.prod(sh) for sh in shapes]
    st: Precond
    if pl.kind == "diag" and n == 1:  # in its own shape (NumPy rounds 0-d arrays as scalars)
        G, st = shaped(gs[0], tuple(dss[0].d.shape)), dss[0]
    elif pl.kind == "diag":
        G = xp.concat([shaped(g, (k,)) for g, k in zip(gs, sizes)])
        st = diag.DiagState(xp.concat([shaped(s.d, (k,)) for s, k in zip(dss, sizes)]))
    elif n == 1:  # a view, no copy
        G = xp.expand_dims(shaped(gs[0], (pl.rows, pl.cols)), axis=0)
        st = type(states[0])(*(None if v is None else xp.expand_dims(v, axis=0) for v in states[0]))
    else:
        G = xp.stack([shaped(g, (pl.rows, pl.cols)) for g in gs])
        st = stack_precond(states)
    o = options
    if own_norm:
        o = Options.trusted({**options.as_dict(), "p": 2.0, "step_scale": "raw"})
    (new,), (ok,), (u,) = precondition_step(
        [st], [G], first=key.first, refresh=key.refresh, reorth=key.reorth, options=o
    )
    changed = key.first or key.refresh  # else the factors are the ones given (no reorth)
    rejected = None
    if key.refresh and not A.known_all(xp, ok):
        bad = ~ok
        if pl.kind == "kron":
            rejected = xp.astype(bad, xp.int64)
        elif n == 1:
            rejected = xp.reshape(xp.astype(xp.any(bad), xp.int64), (1,))
        else:
            rejected = _segment_any(xp, bad, sizes)
    if pl.kind == "kron":
        us = A.unstacker(xp)(u)
        outs = unstack_precond(new) if changed else list(states)
        return BucketStep(outs, [shaped(x, sh) for x, sh in zip(us, shapes)], rejected)
    d = typing.cast(diag.DiagState, new).d
    if own_norm:
        u = segment_direction(d, G, sizes, p=options.p, ref=u)
    if n == 1:
        return BucketStep([new if changed else dss[0]], [shaped(u, shapes[0])], rejected)
    cut = list(itertools.pairwise([0, *itertools.accumulate(sizes)]))
    outs = (
        [diag.DiagState(shaped(d[a:b], tuple(s.d.shape))) for (a, b), s in zip(cut, dss)]
        if changed
        else list(states)
    )
    return BucketStep(outs, [shaped(u[a:b], sh) for (a, b), sh in zip(cut, shapes)], rejected)


class Slots(NamedTuple):
    """Per-parameter buffers of the update after the direction: heavy-ball momentum and,
    with ``graft="adam"``, Adam's moments (None otherwise)."""

    momentum_buffer: Array
    exp_avg: Array | None = None
    exp_avg_sq: Array | None = None


def init_slots(
    xp: Namespace, shape: tuple[int, ...], options: Options, *, dtype: Any, device: Any = None
) -> Slots:
    """Zero :class:`Slots` for a parameter of ``shape`` in the factors' ``dtype``.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> xp = optim.namespace(np.zeros(1))
        >>> s = optim.init_slots(xp, (2, 3), optim.Options(graft="adam"), dtype=np.float32)
        >>> s.momentum_buffer.shape, s.exp_avg.dtype
        ((2, 3), dtype('float32'))
    """

    def z() -> Array:
        return xp.zeros(shape, dtype=dtype, device=device)

    if options.graft == "adam":
        return Slots(z(), z(), z())
    return Slots(z())


def shape_direction(
    u: Array, g: Array, slots: Slots, *, step: Any, options: Options
) -> tuple[Array, Slots]:
    """Adam grafting (``graft="adam"``, 1-based ``step``) then RMS clipping
    (``max_update_rms``) of a direction ``u``; ``g`` is the raw gradient in ``u``'s dtype.

    Example (clipping an RMS of 3 to 1)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> o = optim.Options(max_update_rms=1.0)
        >>> u, _ = optim.shape_direction(np.full(4, 3.0), np.ones(4), optim.Slots(np.zeros(4)),
        ...                              step=1, options=o)
        >>> u.tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    if options.graft == "adam":
        u, ea, eas = graft_adam(
            u,
            g,
            slots.exp_avg,
            slots.exp_avg_sq,
            step=step,
            betas=options.graft_betas,
            eps=options.graft_eps,
        )
        slots = slots._replace(exp_avg=ea, exp_avg_sq=eas)
    if options.max_update_rms is not None and math.prod(u.shape) > 0:
        u = clip_rms(u, options.max_update_rms)
    return u, slots


def update_param(
    param: Array, g: Array, u: Array, slots: Slots, *, step: int, options: Options
) -> tuple[Array, Slots]:
    """The rest of a step after the direction ``u``: :func:`shape_direction`, heavy-ball
    momentum ``m ← μm + U`` (stepping along ``U + μm`` with ``nesterov``, else ``m``),
    decoupled weight decay and the parameter update (math §4.7). Returns the new parameter
    (``param``'s dtype) and slots.

    Example (no momentum: ``M − lr·U``)::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> o = optim.Options(lr=0.5, momentum=0.0)
        >>> w, s = optim.update_param(np.ones(2), np.ones(2), np.ones(2),
        ...                           optim.Slots(np.zeros(2)), step=1, options=o)
        >>> w.tolist()
        [0.5, 0.5]
    """
    u, slots = shape_direction(u, g, slots, step=step, options=options)
    if options.momentum:
        m, u = momentum_step(slots.momentum_buffer, u, options.momentum, nesterov=options.nesterov)
        slots = slots._replace(momentum_buffer=m)
    return apply_update(param, u, lr=options.lr, weight_decay=options.weight_decay), slots


# ----------------------------------------------------------------------------- validation
def orthogonality_tol(dtype_eps: float, n: int) -> float:
    """Largest ``max|BᵀB − I|`` a stored basis may show: a sanity bound that rejects a basis
    that is not one (a random matrix is off by O(1)–O(n)) and never the optimizer's own state.
    The quadratic map adds up to ``4·0.25⁴ = 0.016`` a refresh at the step guard, compounding
    over the 10 refreshes between Newton–Schulz steps (up to ≈ 0.17; 0.101 measured after 8
    steps of N(0, 1) gradients at lr 0.05, which a bound of 0.1 used to reject), so 0.5, plus
    rounding of an ``n``-wide basis (``4·eps·√n``).

    Example::

        >>> from spectral_curv import optim
        >>> round(optim.orthogonality_tol(2.0**-23, 100), 6)
        0.500005
    """
    return 0.5 + 4.0 * dtype_eps * math.sqrt(n)


def _fail(where: str, field: str, why: str) -> None:
    raise ValueError(f"{where}: `{field}` {why}")


def check_precond(st: Precond, pl: Plan, shape: tuple[int, ...], *, where: str = "state") -> None:
    """Raise a ValueError naming ``where`` and the field unless ``st`` is a valid factor state
    for a parameter of ``shape`` under plan ``pl`` (e.g. a restored checkpoint).

    Checks every field's presence, shape (against the plan), real floating dtype and
    finiteness; ``α > 0`` and ``d > 0``; ``Π d = 1`` per Kronecker factor (math §4's
    normalisation, within a dtype-relative tolerance); each ``B`` orthogonal within
    :func:`orthogonality_tol`. Syncs with the host (it reads values).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> pl = optim.plan((3, 2))
        >>> st = optim.init(pl, (3, 2))
        >>> optim.check_precond(st, pl, (3, 2))
        >>> optim.check_precond(st._replace(d_C=-st.d_C), pl, (3, 2), where="param 'w'")
        Traceback (most recent call last):
        ...
        ValueError: param 'w': `d_C` must be > 0
    """
    pl = Plan(*pl)
    if pl.kind == "diag":
        if not isinstance(st, diag.DiagState):
            _fail(where, "d", "is missing: the parameter is preconditioned diagonally")
        want: dict[str, tuple[int, ...] | None] = {"d": tuple(shape)}
    else:
        if not isinstance(st, kron.KronState):
            _fail(
                where, "alpha", "is missing: the parameter is preconditioned by Kronecker factors"
            )
        r, c = pl.rows, pl.cols
        want = {
            "alpha": (),
            "B_C": None if pl.diag_rows else (r, r),
            "d_C": (r,),
            "B_K": None if pl.diag_cols else (c, c),
            "d_K": (c,),
        }
        if getattr(st, "V", None) is not None:  # corrected eigenvalues (math §4.10)
            want["V"] = (r, c)
    for field, shp in want.items():
        x = getattr(st, field)
        other = " (a state made with another `max_precond_dim`?)" if field[0] == "B" else ""
        if shp is None:
            if x is not None:
                _fail(
                    where, field, f"must be absent: that side is kept diagonal by the plan{other}"
                )
            continue
        if x is None or not hasattr(x, "shape"):
            _fail(where, field, f"is missing{other}")
        if tuple(x.shape) != shp:
            _fail(where, field, f"must have shape {shp}, got {tuple(x.shape)}")
        xp = array_namespace(x)
        if not xp.isdtype(x.dtype, "real floating"):
            _fail(where, field, f"must have a real floating dtype, got {x.dtype}")
        if not bool(xp.all(xp.isfinite(x))):
            _fail(where, field, "contains NaN or inf")
        if field in ("alpha", "d", "d_C", "d_K", "V") and not bool(xp.all(x > 0)):
            _fail(where, field, "must be > 0")
        eps = float(xp.finfo(x.dtype).eps)
        if field in ("d_C", "d_K") and shp[0] > 0:
            drift = abs(
                float(xp.mean(xp.log(xp.astype(x, xp.float64 if eps < 1e-10 else xp.float32))))
            )
            if drift > 1e-3 + 16 * eps:
                _fail(where, field, f"must have product 1 (mean log is {drift:.3g})")
        if field in ("B_C", "B_K"):
            n = shp[0]
            b = xp.astype(x, xp.float64 if eps < 1e-10 else xp.float32)
            err = float(xp.max(xp.abs(A.mT(b) @ b - A.eye(xp, n, b)))) if n else 0.0
            if err > orthogonality_tol(eps, n):
                _fail(where, field, f"must be orthogonal (max|BᵀB − I| = {err:.3g})")


def check_counters(step: Any, refreshes: Any, rejected: Any, *, where: str = "state") -> None:
    """Raise a ValueError unless ``0 ≤ rejected ≤ refreshes ≤ step`` are integers.

    Example::

        >>> from spectral_curv import optim
        >>> optim.check_counters(5, 4, 1)
        >>> optim.check_counters(5, 6, 0)
        Traceback (most recent call last):
        ...
        ValueError: state: counters must satisfy 0 <= rejected <= refreshes <= step, got 0, 6, 5
    """
    vals = []
    for name, v in (("step", step), ("refreshes", refreshes), ("rejected", rejected)):
        if hasattr(v, "shape") and not isinstance(v, numbers.Number):
            if math.prod(v.shape) != 1 or not A.is_integer_dtype(v):
                _fail(where, name, f"must be an integer count, got {v!r}")
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            _fail(where, name, f"must be an int >= 0, got {v!r}")
        vals.append(int(v))
    s, f, j = vals
    if not 0 <= j <= f <= s:
        raise ValueError(
            f"{where}: counters must satisfy 0 <= rejected <= refreshes <= step, got {j}, {f}, {s}"
        )


def check_slots(
    slots: Slots, shape: tuple[int, ...], options: Options, *, where: str = "state"
) -> None:
    """Raise a ValueError unless the momentum (and graft moments) have ``shape``, a real
    floating dtype and finite values (``exp_avg_sq ≥ 0``).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> optim.check_slots(optim.Slots(np.zeros(3)), (3,), optim.Options())
        >>> optim.check_slots(optim.Slots(np.zeros(2)), (3,), optim.Options())
        Traceback (most recent call last):
        ...
        ValueError: state: `momentum_buffer` must have shape (3,), got (2,)
    """
    names = ["momentum_buffer"] + (["exp_avg", "exp_avg_sq"] if options.graft == "adam" else [])
    for field in names:
        x = getattr(slots, field)
        if x is None or not hasattr(x, "shape"):
            _fail(where, field, "is missing")
        if tuple(x.shape) != tuple(shape):
            _fail(where, field, f"must have shape {tuple(shape)}, got {tuple(x.shape)}")
        xp = array_namespace(x)
        if not xp.isdtype(x.dtype, "real floating"):
            _fail(where, field, f"must have a real floating dtype, got {x.dtype}")
        if not bool(xp.all(xp.isfinite(x))):
            _fail(where, field, "contains NaN or inf")
        if field == "exp_avg_sq" and not bool(xp.all(x >= 0)):
            _fail(where, field, "must be >= 0")


#: The per-parameter counters of every adapter's state (:func:`check_counters`' order).
COUNTERS = ("step", "refreshes", "rejected")


def state_keys(pl: Plan, options: Options) -> set[str]:
    """The keys of one parameter's flat state in every adapter: the counters, the factor
    fields of plan ``pl`` and the :class:`Slots` that ``options`` use.

    Example::

        >>> from spectral_curv import optim
        >>> sorted(optim.state_keys(optim.plan((3,)), optim.Options()))
        ['d', 'momentum_buffer', 'refreshes', 'rejected', 'step']
    """
    pl = Plan(*pl)
    keys = {"step", "refreshes", "rejected", "momentum_buffer"}
    if pl.kind == "diag":
        keys.add("d")
    else:
        keys |= {"alpha", "d_C", "d_K"}
        if not pl.diag_rows:
            keys.add("B_C")
        if not pl.diag_cols:
            keys.add("B_K")
        if options.eigenvalues == "corrected":
            keys.add("V")
    if options.graft == "adam":
        keys |= {"exp_avg", "exp_avg_sq"}
    return keys


def precond_of(state: Mapping[str, Any], pl: Plan) -> Precond:
    """The factor state kept in one parameter's flat ``state`` (:func:`state_keys`) under
    plan ``pl``; a side kept diagonal (no ``B_*`` key) gives None.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> optim.precond_of({"step": 0, "d": np.ones(3)}, optim.plan((3,)))
        DiagState(d=array([1., 1., 1.]))
        >>> optim.precond_of({"alpha": 1.0, "d_C": 2, "d_K": 3}, optim.plan((2, 3)))
        KronState(alpha=1.0, B_C=None, d_C=2, B_K=None, d_K=3, V=None)
    """
    if Plan(*pl).kind == "diag":
        return diag.DiagState(state["d"])
    return kron.KronState(*(state.get(k) for k in kron.KronState._fields))


def slots_of(state: Mapping[str, Any]) -> Slots:
    """The :class:`Slots` kept in one parameter's flat ``state`` (None where absent).

    Example::

        >>> from spectral_curv import optim
        >>> optim.slots_of({"step": 3, "momentum_buffer": 0.5})
        Slots(momentum_buffer=0.5, exp_avg=None, exp_avg_sq=None)
    """
    return Slots(*(state.get(k) for k in Slots._fields))


def flat_state(*parts: Precond | Slots) -> dict[str, Any]:
    """The fields of factor states and :class:`Slots` that are not None, as the flat
    ``{key: array}`` of one parameter's state (the inverse of :func:`precond_of` and
    :func:`slots_of`), in field order.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> pl = optim.plan((4, 3), max_precond_dim=3)
        >>> st = optim.init(pl, (4, 3))
        >>> sorted(optim.flat_state(st, optim.Slots(np.zeros((4, 3)))))
        ['B_K', 'alpha', 'd_C', 'd_K', 'momentum_buffer']
    """
    return {k: v for part in parts for k, v in zip(part._fields, part) if v is not None}


def fresh_state(
    pl: Plan,
    shape: tuple[int, ...],
    options: Options,
    *,
    dtype: Any,
    device: Any = None,
    xp: Namespace,
) -> dict[str, Any]:
    """One parameter's new flat state: the :data:`COUNTERS` at 0 (Python ints), fresh factors
    (:func:`init`, ``S = I``) and zero :class:`Slots` in ``dtype`` (:func:`flat_state`).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> xp = optim.namespace(np.zeros(1))
        >>> st = optim.fresh_state(optim.plan((3,)), (3,), optim.Options(), dtype=np.float32, xp=xp)
        >>> list(st), st["d"].dtype
        (['step', 'refreshes', 'rejected', 'd', 'momentum_buffer'], dtype('float32'))
    """
    pre = init(
        pl,
        matrix_shape(pl, shape),
        eigenvalues=options.eigenvalues,
        dtype=dtype,
        device=device,
        xp=xp,
    )
    slots = init_slots(xp, tuple(shape), options, dtype=dtype, device=device)
    return {**dict.fromkeys(COUNTERS, 0), **flat_state(pre, slots)}


def stack_precond(states: Sequence[Precond]) -> Precond:
    """Same-plan factor states stacked along a new leading axis (one bucket's batched state;
    a side kept diagonal stays None). :func:`unstack_precond` undoes it.

    Example::

        >>> from spectral_curv import optim
        >>> pl = optim.plan((4, 3))
        >>> st = optim.stack_precond([optim.init(pl, (4, 3)), optim.init(pl, (4, 3))])
        >>> st.alpha.shape, st.B_C.shape, len(optim.unstack_precond(st))
        ((2,), (2, 4, 4), 2)
    """
    xp = array_namespace(*(v for v in states[0] if v is not None))
    fields = zip(*states)
    return type(states[0])(*(None if v[0] is None else xp.stack(list(v)) for v in fields))


def unstack_precond(st: Precond) -> list[Precond]:
    """The layers of a stacked factor state (:func:`stack_precond`), each a view of its slice.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> st = optim.init(optim.plan((4, 3)), (4, 3), batch=(2,))
        >>> [s.B_C.shape for s in optim.unstack_precond(st)]
        [(4, 4), (4, 4)]
    """
    ref = next(v for v in st if v is not None)
    n, split = ref.shape[0], A.unstacker(array_namespace(ref))
    cols = [(None,) * n if v is None else split(v) for v in st]
    return [type(st)(*fields) for fields in zip(*cols)]


def check_state(
    state: Mapping[str, Any], pl: Plan, shape: tuple[int, ...], options: Options, *, where: str
) -> None:
    """Validate one parameter's flat saved state (e.g. from a checkpoint) before anything is
    loaded: the keys (:func:`state_keys`), :func:`check_counters`, :func:`check_precond` and
    :func:`check_slots`. Raises a ValueError naming ``where`` and the field.

    Example::

        >>> import numpy as np
        >>> from spectral_curv import optim
        >>> o, pl = optim.Options(), optim.plan((2,))
        >>> good = {"step": 1, "refreshes": 1, "rejected": 0, "d": np.ones(2),
        ...         "momentum_buffer": np.zeros(2)}
        >>> optim.check_state(good, pl, (2,), o, where="param 'b'")
        >>> optim.check_state({**good, "d": np.array([1.0, np.nan])}, pl, (2,), o, where="b")
        Traceback (most recent call last):
        ...
        ValueError: b: `d` contains NaN or inf
    """
    want = state_keys(pl, options)
    if not isinstance(state, Mapping) or set(state) != want:
        got = sorted(map(str, state)) if isinstance(state, Mapping) else type(state)
        raise ValueError(f"{where} must have the keys {sorted(want)}, got {got}")
    check_counters(state["step"], state["refreshes"], state["rejected"], where=where)
    pre = precond_of(state, pl)
    check_precond(pre, pl, matrix_shape(pl, shape), where=where)
    check_slots(slots_of(state), shape, options, where=where)
