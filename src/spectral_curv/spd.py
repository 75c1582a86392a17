"""SPD matrix optimisation ``min_{S≻0} f(S)`` with the spectral scheme (math §2, §6; Fig. 3).

Given the Euclidean gradient ``G = ∇_S f(S)`` (its symmetric part is used: that is the
gradient on the space of symmetric matrices), one spectral step is the generic update of
math §2 with ``Δ = −2 S G S`` and ``β₂ = lr``; with ``S = B Diag(d) Bᵀ`` this is
``Q = BᵀΔB = −2 Diag(d)(BᵀGB)Diag(d)``, which :func:`step` forms directly (two matmuls;
neither ``S`` nor ``Δ`` is formed). By default (``sweeps=3``) it passes ``Q`` to
:func:`spectral_curv.full.update_geodesic`, which factors the geodesic step (the same ``S`` as
``"rgd_expm"`` below, to the sweeps' accuracy) by matmul-only rotation sweeps (math §2.5);
``sweeps=0`` is the paper's first-order step, :func:`spectral_curv.full.update_rotated`.
``Δ`` is indefinite in general, so the exact exp / Cayley maps are the default.

Step-size convention (one ``lr`` for every method). To first order in ``lr`` every method
here moves ``S ← S − 2·lr·S G S``, the Riemannian gradient step for the Gaussian (Fisher)
metric ``½ tr(S⁻¹ U S⁻¹ V)``:

* ``"spectral"``: ``full.update_geodesic(state, −2 Diag(d)(BᵀGB)Diag(d), beta2=lr)``
  (``sweeps=0``: ``full.update_rotated`` of the same ``Q``, i.e. ``full.update(state,
  −2 S G S, beta2=lr)``; exact maps by default).
* ``"rgd_expm"``: Riemannian GD with the affine-invariant exponential retraction,
  ``S ← S^{1/2} expm(−2·lr·S^{1/2} G S^{1/2}) S^{1/2}`` (math §6.4 with ``β = 2·lr``).
* ``"rgd_second_order"``: the second-order retraction ``S + ξ + ½ ξ S⁻¹ ξ`` with
  ``ξ = −2·lr·S G S`` (math §6.4 with ``β = 2·lr``); ``½ ξ S⁻¹ ξ = 2 lr² S G S G S`` needs no
  inverse, and ``S + ξ + ½ξS⁻¹ξ = ½S + ½(S + ξ)S⁻¹(S + ξ) ≻ 0``.
* ``"cholesky"``: the Cholesky / inverse-free baseline of math §6.2
  (:func:`spectral_curv.baselines.cholesky_update`, ``S⁻¹ = K Kᵀ``, ``Δ = −2 S G S``,
  ``X = KᵀΔK = −2 K⁻¹ G K⁻ᵀ``, ``K ← K · expm(−lr·M)`` exactly, ``exp="first_order"`` for
  ``K (I − lr·M)``).

The two baselines' steps are :func:`spectral_curv.baselines.rgd_step` and
:func:`spectral_curv.baselines.cholesky_step` (every math §6 method is in
:mod:`spectral_curv.baselines`); ``spd.rgd_step`` and ``spd.cholesky_step`` remain importable
here as deprecated aliases of those functions.

Problems of the paper (Fig. 3, Sec. 4.2), see :func:`metric_nearness` and :func:`log_det`:

* metric nearness ``f(S) = (1/2N) Σ_i ‖S Q x_i − x_i‖²``, with gradient
  ``sym((S Y − X) Yᵀ)/N`` (``Y = QX``); only a random subset of the ``x_i`` is observed at
  each iteration (:meth:`MetricNearness.sampler`). Optimum: ``f ≥ 0`` and ``f(Q⁻¹) = 0``, and
  ``f`` is strictly convex on symmetric matrices when ``X Xᵀ`` is full rank (its Hessian is
  ``U ↦ sym(U Q C Q)``, ``C = XXᵀ/N``, with ``⟨U, UQCQ⟩ = ‖U Q C^{1/2}‖² > 0``), so
  ``S* = Q⁻¹`` is the unique minimiser, and ``f* = 0``. Every per-sample gradient vanishes at
  ``S*`` too (``S*Qx_i = x_i``), so minibatch steps with a constant ``lr`` still converge to
  the exact optimum (interpolation).
* log-det ``f(S) = Tr(SQ) − log det S``, gradient ``Q − S⁻¹``, optimum ``S* = Q⁻¹``,
  ``f* = n + log det Q``.

Example::

    >>> from spectral_curv import spd
    >>> prob = spd.log_det(5, seed=0)
    >>> res = spd.minimize(prob.grad, prob.s0, lr=0.5, steps=30, loss_fn=prob.gap)
    >>> bool(res.losses[-1] < 1e-10)
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import _array as A
from . import baselines, full, maps
from ._array import Array, Namespace, array_namespace
from .baselines import _sym_grad

__all__ = [
    "METHODS",
    "GaussianML",
    "KarcherMean",
    "LogDet",
    "LossIncreaseWarning",
    "MetricNearness",
    "SPDResult",
    "gaussian_ml",
    "init",
    "iterations_to",
    "karcher_mean",
    "log_det",
    "metric_nearness",
    "minimize",
    "step",
]

#: The methods :func:`minimize` runs (see the module docstring for their formulas).
METHODS = ("spectral", "rgd_expm", "rgd_second_order", "cholesky")


# --------------------------------------------------------------------------- checks


def _check_lr(lr: Any) -> None:
    A.check_positive("lr", lr)


def _check_spd(name: str, s: Array) -> tuple[Namespace, Array, Array]:
    """Validate a dense SPD matrix; return its namespace and eigendecomposition ``(w, V)``."""
    try:
        xp = array_namespace(s)
    except TypeError as e:
        raise ValueError(f"`{name}` must be an array, got {type(s)!r}") from e
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty square matrix, got shape {tuple(s.shape)}")
    if not xp.isdtype(s.dtype, "real floating"):
        raise ValueError(f"`{name}` must have a real floating dtype, got {s.dtype}")
    if not A.is_lazy(s):
        if not bool(xp.all(xp.isfinite(s))):
            raise ValueError(f"`{name}` contains non-finite values")
        scale = max(float(xp.max(xp.abs(s))), 1e-300)
        asym = float(xp.max(xp.abs(s - s.mT)))
        if asym > 1e3 * A.eps(xp, s.dtype) * scale:
            raise ValueError(f"`{name}` must be symmetric (max |S − Sᵀ| = {asym:.3g})")
    w, v = xp.linalg.eigh(0.5 * (s + s.mT))
    if not A.is_lazy(w) and not bool(xp.all(w > 0)):
        raise ValueError(
            f"`{name}` must be positive definite (smallest eigenvalue {float(w[0]):.3g})"
        )
    return xp, w, v


# ------------------------------------------------------------------------ the steps


def init(s0: Array) -> full.SpectralState:
    """Spectral state ``(B, d)`` of an explicit SPD ``s0`` (one ``eigh``).

    Raises a ValueError naming ``s0`` when it is not a square, symmetric, positive-definite
    real matrix.

    Example (the eigendecomposition, ascending; an indefinite matrix is refused)::

        >>> import numpy as np
        >>> from spectral_curv import full, spd
        >>> st = spd.init(np.array([[2.0, 1.0], [1.0, 2.0]]))
        >>> st.d.tolist(), bool(np.allclose(full.dense(st), [[2.0, 1.0], [1.0, 2.0]]))
        ([1.0, 3.0], True)
        >>> spd.init(np.diag([1.0, -1.0]))
        Traceback (most recent call last):
        ...
        ValueError: `s0` must be positive definite (smallest eigenvalue -1)
    """
    _, w, v = _check_spd("s0", s0)
    return full.SpectralState(v, w)


def _resolve_sweeps(sweeps: int | None, rotation: str | None, exp: str) -> int:
    """``sweeps`` of :func:`step`: ``None`` → 3 (0 for the paper's rule or the truncated exp)."""
    paper_only = maps.resolve_rotation(rotation) == "paper" or exp != "exact"
    if sweeps is None:
        return 0 if paper_only else full.DEFAULT_SWEEPS
    if not isinstance(sweeps, int) or isinstance(sweeps, bool) or sweeps < 0:
        raise ValueError(f"`sweeps` must be an int >= 0, got {sweeps!r}")
    if sweeps and paper_only:
        raise ValueError(
            "`sweeps` > 0 (the geodesic step) needs rotation='damped' and exp='exact'; "
            f"got rotation={rotation!r}, exp={exp!r} (use sweeps=0 for the paper's step)"
        )
    return sweeps


def step(
    state: full.SpectralState,
    grad: Array,
    *,
    lr: Any,
    cayley: str = "exact",
    exp: str = "exact",
    cayley_terms: int = 1,
    tie_tol: float | None = None,
    max_step_norm: float | None = None,
    rotation: str | None = None,
    sweeps: int | None = None,
) -> full.SpectralState:
    """One spectral step with ``Δ = −2 S G S``, ``G = sym(grad)``, ``β₂ = lr`` (math §2, §2.5).

    ``grad`` is ``∇_S f`` at ``S = B Diag(d) Bᵀ = full.dense(state)``. The step stays in the
    factored frame: ``Q = BᵀΔB = −2 Diag(d)(BᵀGB)Diag(d)`` (``S`` and ``Δ`` are never formed).

    ``sweeps`` (default :data:`spectral_curv.full.DEFAULT_SWEEPS` = 3): ``Q`` goes to
    :func:`spectral_curv.full.update_geodesic`, which factors the affine-invariant geodesic
    step ``S^{1/2} expm(−2·lr·S^{1/2}GS^{1/2}) S^{1/2}`` (the ``rgd_expm`` step) by that many
    matmul-only rotation sweeps: the basis follows the curvature in one iteration instead of
    over many (docs/spd.md, "Geodesic step"). ``sweeps=0`` is the paper's one-step update,
    :func:`spectral_curv.full.update_rotated` (the same step as ``full.update(state, −2 S G S,
    beta2=lr)`` to round-off); it is the default where ``rotation="paper"`` or
    ``exp="first_order"`` is asked for, which only that step has. The remaining options are
    those of :func:`spectral_curv.full.update`; ``rotation`` is its basis-update rule
    (``"damped"``, the default, or the paper's ``"paper"``; docs/spd.md, "Near ties").

    Example (``S = I``, ``G = I``: ``d ← exp(−2·lr)``, the ``rgd_expm`` step exactly)::

        >>> import numpy as np
        >>> from spectral_curv import full, spd
        >>> st = spd.step(spd.init(np.eye(2)), np.eye(2), lr=0.1)
        >>> bool(np.allclose(st.d, np.exp(-0.2)))
        True
        >>> from spectral_curv import baselines
        >>> bool(np.allclose(full.dense(st), baselines.rgd_step(np.eye(2), np.eye(2), lr=0.1)))
        True
    """
    xp = array_namespace(state.B, state.d)
    n = state.d.shape[-1]
    _check_lr(lr)
    sweeps = _resolve_sweeps(sweeps, rotation, exp)
    A.check_same_namespace(xp, B=state.B, grad=grad)
    g = _sym_grad(xp, grad, n)
    b, d = state.B, state.d
    gb = g @ b
    # Q = BᵀΔB = −2 Diag(d)(BᵀGB)Diag(d) (symmetric to round-off: the geodesic step
    # symmetrises it, the one-step update reads its strict lower triangle and diagonal).
    q = (-2.0 * d[:, None]) * (b.mT @ gb) * d[None, :]
    if sweeps:
        return full.update_geodesic(
            state,
            q,
            beta2=lr,
            sweeps=sweeps,
            cayley=cayley,
            cayley_terms=cayley_terms,
            max_step_norm=max_step_norm,
            check=False,
        )
    return full.update_rotated(
        state,
        q,
        diag_q=(-2.0 * d * d) * xp.sum(b * gb, axis=-2),  # diag(Q) elementwise from B, GB
        check=False,
        beta2=lr,
        cayley=cayley,
        exp=exp,
        cayley_terms=cayley_terms,
        tie_tol=tie_tol,
        max_step_norm=max_step_norm,
        rotation=rotation,
    )


# ------------------------------------------------------------------------- the loop


class SPDResult(NamedTuple):
    """Outcome of :func:`minimize` (math §2, §6.4): final ``S`` (dense), the method's final
    state, ``losses[k] = loss_fn(S_k)`` for ``k = 0..K`` (``S_0 = s0``; empty without
    ``loss_fn``), whether the run converged and why it stopped.

    ``converged`` is True when ``target`` was given and reached, or, without a ``target``,
    when a stop rule that needs no known optimum fired (natural gradient norm ``≤ gtol``,
    relative loss change ``≤ ftol``); False when a ``target`` was given and not reached, a
    loss was not finite or the line search found no decrease; None when there is nothing to
    judge by (steps exhausted, no ``target``). ``message`` says why the run ended in words
    (including a stall: the best loss not improved over the last ``max(20, steps // 10)``
    iterations while still above ``target``). ``niter`` is the number of steps taken,
    ``nfev`` the number of ``loss_fn`` calls (line-search trials included) and ``grad_norm``
    the natural gradient norm ``‖S^{1/2} G S^{1/2}‖_F`` at the last iterate where it was
    computed, the one before the returned ``S`` (NaN when none was).

    Example (``losses`` holds ``K + 1`` values for ``K`` steps)::

        >>> import numpy as np
        >>> from spectral_curv import full, spd
        >>> prob = spd.log_det(3, seed=0)
        >>> res = spd.minimize(prob.grad, prob.s0, lr=0.5, steps=5, loss_fn=prob.gap)
        >>> len(res.losses), res.niter, type(res.state).__name__, res.converged
        (6, 5, 'SpectralState', None)
        >>> bool(np.allclose(res.S, full.dense(res.state)))
        True
        >>> res = spd.minimize(prob.grad, prob.s0, lr=0.5, steps=50, loss_fn=prob.gap, target=1e-8)
        >>> res.converged, res.message.startswith("reached target")
        (True, True)
    """

    S: Array
    state: Any
    losses: list[float]
    converged: bool | None = None
    message: str = ""
    niter: int = 0
    nfev: int = 0
    grad_norm: float = math.nan


class LossIncreaseWarning(UserWarning):
    """Emitted by :func:`minimize` with a fixed ``lr`` (no line search) when the loss rose
    for ``max_rises`` consecutive steps: the step size is probably too large for the
    problem (math §6.4's ``β = 2·lr`` is past the curvature scale). A ``UserWarning``, not a
    ``RuntimeWarning``, so it does not stop a run under ``-W error::RuntimeWarning``.

    Example (``f(S) = Tr(S) − log det S`` at far too large an ``lr``)::

        >>> import warnings
        >>> import numpy as np
        >>> from spectral_curv import spd
        >>> f = lambda s: float(np.trace(s) - np.linalg.slogdet(s)[1])
        >>> grad = lambda s: np.eye(2) - np.linalg.inv(s)
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     _ = spd.minimize(grad, np.diag([0.2, 5.0]), lr=3.0, steps=8, loss_fn=f,
        ...                      max_rises=2, gtol=0.0)
        >>> [x.category.__name__ for x in w]
        ['LossIncreaseWarning']
    """


def _stall_window(steps: int) -> int:
    return max(20, steps // 10)


def _verdict(
    losses: list[float],
    steps: int,
    target: float | None,
    reason: str = "steps",
    detail: str = "",
) -> tuple[bool | None, str]:
    """``(converged, message)`` of a finished run (see :class:`SPDResult`).

    ``reason`` is why the loop ended: ``"steps"`` (exhausted or a loss stop), ``"gtol"``,
    ``"ftol"``, ``"callback"`` or ``"line_search"``; ``detail`` is appended in words.
    """
    k = len(losses) - 1
    if losses and not math.isfinite(losses[-1]):
        return False, f"loss not finite ({losses[-1]}) after {k} steps: stopped"
    if losses and target is not None and losses[-1] <= target:
        return True, f"reached target {target:.3g} after {k} steps (loss {losses[-1]:.3g})"
    if reason in ("gtol", "ftol", "callback", "line_search"):
        ok: bool | None = reason in ("gtol", "ftol")
        if reason == "callback":
            ok = None
        if target is not None:
            ok = False
            detail += f"; target {target:.3g} not reached (loss {losses[-1]:.3g})"
        return ok, detail
    if not losses:
        return None, f"ran {steps} steps (no loss_fn: convergence not assessed){detail}"
    last = losses[-1]
    best = min(losses)
    k_best = losses.index(best)
    window = _stall_window(steps)
    if target is None:
        return None, f"ran {steps} steps, no target given (final loss {last:.3g}, best {best:.3g})"
    msg = (
        f"did not reach target {target:.3g} in {steps} steps: final loss {last:.3g}, "
        f"best {best:.3g} at step {k_best}"
    )
    if k - k_best >= window:
        tail = losses[-window:]
        msg += (
            f"; stalled: no decrease of the best loss over the last {k - k_best} steps "
            f"(loss in [{min(tail):.3g}, {max(tail):.3g}] over the last {window})"
        )
    else:
        msg += "; still decreasing: more steps (or another lr) may reach it"
    return False, msg


def _autodiff_grad(loss_fn: Callable[[Array], Any], like: Array) -> Callable[[Array], Array]:
    """``∇_S loss_fn`` by the autodiff of ``like``'s framework (math §6.4): ``torch.func.grad``
    for torch tensors, ``jax.grad`` for JAX arrays (imported here, lazily)."""
    top = type(like).__module__.split(".")[0]
    if top == "torch":
        import torch.func

        return torch.func.grad(loss_fn)
    if top in ("jax", "jaxlib"):
        import jax

        return jax.grad(loss_fn)
    raise ValueError(
        f"`grad_fn` is needed for {type(like).__module__}.{type(like).__name__} arrays: "
        "a `loss_fn` alone is differentiated only for torch tensors and JAX arrays"
    )


def _natural_sq(method: str, state: Any, s: Array, g: Array) -> Array:
    """``‖S^{1/2} G S^{1/2}‖_F² = tr(SGSG)`` (math §6.4's metric, ``G = sym(grad)``);
    spectral: ``Σ_ij d_i d_j P_ij²``, ``P = BᵀGB``, in the factored frame."""
    xp = array_namespace(s)
    if method == "spectral":
        b, d = state.B, state.d
        p = b.mT @ g @ b
        return xp.sum((d[:, None] * p * d[None, :]) * p)
    sg = s @ g
    return xp.sum(sg * sg.mT)


def _metric_frame(method: str, state: Any, s: Array) -> Array:
    """``W`` with ``S⁻¹ = W Wᵀ``, so that ``tr(S⁻¹US⁻¹V) = ⟨WᵀUW, WᵀVW⟩`` (the metric of
    math §6.4 at ``S``): ``B Diag(d)^{-1/2}`` (spectral), ``K`` (Cholesky), else by ``eigh``."""
    xp = array_namespace(s)
    if method == "spectral":
        return state.B / xp.sqrt(state.d)[None, :]
    if method == "cholesky":
        return state.K
    w, v = xp.linalg.eigh(0.5 * (s + s.mT))
    return v / xp.sqrt(w)[None, :]


def minimize(
    grad_fn: Callable[[Array], Array] | None = None,
    s0: Array | full.SpectralState | None = None,
    *,
    lr: Any = None,
    steps: int = 1000,
    method: str = "spectral",
    loss_fn: Callable[[Array], Any] | None = None,
    target: float | None = None,
    line_search: bool | None = None,
    bb: bool = True,
    gtol: float = 1e-8,
    ftol: float = 1e-15,
    callback: Callable[[int, Array], Any] | None = None,
    max_rises: int = 5,
    cayley: str = "exact",
    exp: str = "exact",
    max_step_norm: float | None = None,
    rotation: str | None = None,
    sweeps: int | None = None,
    warn: bool = True,
) -> SPDResult:
    """Minimise ``f`` over SPD matrices from ``grad_fn(S) = ∇_S f(S)`` (math §2, §6.4).

    ``s0`` is an SPD matrix (or, for ``method="spectral"``, a :class:`full.SpectralState`).
    ``method`` is one of :data:`METHODS`; all share the step-size convention of the module
    docstring (a step of size ``t`` moves ``S ← S − 2t·SGS`` to first order). ``loss_fn(S)``
    (optional) is recorded before the first and after every step; with ``target`` the loop
    stops once ``loss_fn(S) ≤ target``. ``cayley``/``exp`` are the spectral maps (``exp``
    also selects the Cholesky baseline's exact / first-order factor update), ``rotation`` the
    spectral basis-update rule and ``sweeps`` its geodesic-step sweeps (:func:`step`).

    **Gradients.** ``grad_fn`` may be None when ``loss_fn`` is a torch or JAX objective of a
    dense ``S``: it is differentiated by ``torch.func.grad`` / ``jax.grad``, chosen by the
    array type of ``s0`` (NumPy users pass ``grad_fn``).

    **Step size.** ``line_search`` (default: on when ``loss_fn`` is given and ``lr`` is not)
    runs an Armijo backtracking search along the method's own step: the trial point is the
    state after one step of size ``t`` (for ``"spectral"`` :func:`step`, the basis map and
    the exp map on ``d``), accepted when
    ``f(trial) ≤ f(S) − c·t·2‖S^{1/2}GS^{1/2}‖_F² + 8·eps·|f(S)|`` (``c = 1e-4``; the slope
    is ``d/dt f(S(t))`` at ``t = 0``, the last term absorbs the round-off of ``f`` near the
    optimum), halving ``t`` up to 40 times; if none passes, the best trial that lowers ``f``
    is taken, else the run stops. The first trial is the Barzilai–Borwein step
    ``⟨s, s⟩/⟨s, y⟩`` in the metric ``tr(S⁻¹US⁻¹V)`` (``s = S_k − S_{k−1}``,
    ``y = 2(S_kG_kS_k − S_{k−1}G_{k−1}S_{k−1})``; ``bb=False``: twice the last accepted
    ``t``), and at the first step ``lr`` or, without it, ``1/(2‖S^{1/2}GS^{1/2}‖_F)`` (a
    step of unit natural length). An explicit ``lr`` without ``line_search=True`` keeps the
    fixed step ``lr`` (the former contract); a ``LossIncreaseWarning`` then says when the
    loss rose for ``max_rises`` consecutive steps.

    **Stop rules** needing no known optimum: the natural gradient norm
    ``‖S^{1/2}GS^{1/2}‖_F ≤ gtol`` (math §6.4's metric; factored frame for ``"spectral"``),
    the relative loss change ``|f_k − f_{k+1}| ≤ ftol·max(|f_k|, |f_{k+1}|)``, ``steps``
    (the maximum number of iterations), a non-finite loss (that iterate is returned), and
    ``callback(k, S_k)`` returning True (called after each step ``k = 1..K``).

    No silent plateau: the result's ``converged`` / ``message`` say whether and why the run
    did not converge (:class:`SPDResult`), and a ``RuntimeWarning`` is emitted when a
    ``target`` was given and not reached (steps exhausted, stalled, or a non-finite loss);
    ``warn=False`` leaves it to the result (for a ``target`` used only as an early stop).

    Example (``f(S) = Tr(S) − log det S``, minimised at ``S* = I``; every method)::

        >>> import numpy as np
        >>> from spectral_curv import spd
        >>> grad = lambda s: np.eye(3) - np.linalg.inv(s)
        >>> s0 = np.diag([0.5, 1.0, 2.0])
        >>> res = spd.minimize(grad, s0, lr=0.25, steps=40)
        >>> res.S.shape, len(res.losses), bool(np.allclose(res.S, np.eye(3), atol=1e-6))
        ((3, 3), 0, True)
        >>> [bool(np.allclose(spd.minimize(grad, s0, lr=0.25, steps=40, method=m).S,
        ...                   np.eye(3), atol=1e-4)) for m in spd.METHODS]
        [True, True, True, True]

    Defaults (line search, no ``lr``) stop on the gradient norm::

        >>> f = lambda s: np.trace(s) - np.linalg.slogdet(s)[1]
        >>> res = spd.minimize(grad, s0, loss_fn=f)
        >>> res.converged, res.message.split(" ≤")[0], bool(np.allclose(res.S, np.eye(3)))
        (True, 'natural gradient norm', True)

    A target that is not reached is reported, not hidden::

        >>> import warnings
        >>> loss = lambda s: np.linalg.norm(s - np.eye(3))
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     res = spd.minimize(grad, s0, lr=0.25, steps=3, loss_fn=loss, target=1e-8)
        >>> res.converged, w[0].category.__name__, res.message.split(":")[0]
        (False, 'RuntimeWarning', 'did not reach target 1e-08 in 3 steps')
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"`steps` must be an int >= 0, got {steps!r}")
    if s0 is None:
        raise ValueError("`s0` (the starting SPD matrix) is required")
    if lr is not None:
        _check_lr(lr)
    if method == "spectral":  # sweeps is the spectral step's option only
        _resolve_sweeps(sweeps, rotation, exp)
    if target is not None and loss_fn is None:
        raise ValueError("`target` needs a `loss_fn`")
    if line_search is None:
        line_search = loss_fn is not None and lr is None
    if line_search and loss_fn is None:
        raise ValueError("`line_search` needs a `loss_fn`")
    if not line_search and lr is None:
        raise ValueError("`lr` is needed without a line search (or pass a `loss_fn`)")
    for name, val in (("gtol", gtol), ("ftol", ftol)):
        A.check_positive(name, val, allow_zero=True)
    if not isinstance(max_rises, int) or max_rises < 1:
        raise ValueError(f"`max_rises` must be an int >= 1, got {max_rises!r}")

    if isinstance(s0, full.SpectralState):
        if method != "spectral":
            raise ValueError("`s0` may be a SpectralState only for method='spectral'")
        state: Any = s0
        s = full.dense(state)
        _check_spd("s0", s)  # d > 0 and finite: a dense S that is SPD
        xp = array_namespace(s)
        n = s.shape[-1]
        drift = xp.max(xp.abs(state.B.mT @ state.B - A.eye(xp, n, s)))
        if not float(drift) <= math.sqrt(A.eps(xp, s.dtype)):
            raise ValueError(f"`s0`: `B` must be orthogonal, ‖BᵀB − I‖_max = {float(drift):.3g}")
    else:
        _check_spd("s0", s0)
        s = s0
        if method == "spectral":
            state = init(s0)
        elif method == "cholesky":
            state = baselines.cholesky_from_dense(s0)
        else:
            state = s0
    if grad_fn is None:
        if loss_fn is None:
            raise ValueError("give `grad_fn`, or a torch / JAX `loss_fn` to differentiate")
        grad_fn = _autodiff_grad(loss_fn, s)
    xp = array_namespace(s)
    n = s.shape[-1]

    def advance(st: Any, sk: Array, g: Array, t: Any) -> tuple[Any, Array]:
        """The method's step of size ``t`` from ``(st, sk)``: ``(state, dense S)``."""
        if method == "spectral":
            st = step(
                st,
                g,
                lr=t,
                cayley=cayley,
                exp=exp,
                max_step_norm=max_step_norm,
                rotation=rotation,
                sweeps=sweeps,
            )
            return st, full.dense(st)
        if method == "cholesky":
            st = baselines.cholesky_step(st, g, lr=t, exp=exp)
            return st, baselines.cholesky_dense(st)
        retraction = "expm" if method == "rgd_expm" else "second_order"
        sk = baselines.rgd_step(sk, g, lr=t, retraction=retraction)
        return sk, sk

    losses: list[float] = []
    nfev = 0

    def evaluate(s_k: Array) -> float:
        nonlocal nfev
        nfev += 1
        val = float(loss_fn(s_k))  # type: ignore[misc]
        return val if not math.isnan(val) else math.inf

    if loss_fn is not None:
        losses.append(evaluate(s))
    reason, detail = "steps", ""
    gnorm = math.nan
    rises = 0
    warned_rise = False
    t_prev: float | None = None
    prev: tuple[Array, Array] | None = None  # (S, SGS) of the previous iterate, for BB
    eps = A.eps(xp, s.dtype)
    k = 0
    stop = bool(losses) and (
        not math.isfinite(losses[-1]) or (target is not None and losses[-1] <= target)
    )
    while not stop and k < steps:
        g = _sym_grad(xp, grad_fn(s), n)
        gsq = _natural_sq(method, state, s, g)
        gnorm = math.sqrt(max(float(gsq), 0.0))
        if not math.isfinite(gnorm):
            reason, detail = "line_search", f"gradient not finite after {k} steps: stopped"
            break
        if gnorm <= gtol:
            reason, detail = (
                "gtol",
                f"natural gradient norm ≤ gtol = {gtol:.3g} after {k} steps",
            )
            break
        if line_search:
            f0 = losses[-1]
            sgs = None
            t0: float
            if bb or t_prev is None:
                sgs = s @ g @ s
            if t_prev is None:
                t0 = float(lr) if lr is not None else 1.0 / (2.0 * max(gnorm, 1e-300))
            elif bb and prev is not None:
                w = _metric_frame(method, state, s)
                a = w.mT @ (s - prev[0]) @ w
                y = w.mT @ (2.0 * (sgs - prev[1])) @ w
                sy = float(xp.sum(a * y))
                ss = float(xp.sum(a * a))
                t0 = ss / sy if sy > 0 and ss > 0 else 2.0 * t_prev
            else:
                t0 = 2.0 * t_prev
            t0 = min(max(t0, 1e-12), 1e12) if math.isfinite(t0) else 1.0
            slope = 2.0 * gnorm * gnorm
            slack = 8.0 * eps * abs(f0)
            t = t0
            best: tuple[float, float, Any, Array] | None = None
            accepted = None
            for _ in range(41):
                st_t, s_t = advance(state, s, g, t)
                f_t = evaluate(s_t)
                if f_t <= f0 - 1e-4 * t * slope + slack:
                    accepted = (t, f_t, st_t, s_t)
                    break
                if f_t < f0 and (best is None or f_t < best[1]):
                    best = (t, f_t, st_t, s_t)
                t *= 0.5
            if accepted is None:
                accepted = best
            if accepted is None:
                reason, detail = (
                    "line_search",
                    f"line search found no decrease after {k} steps (t down to {t:.3g}; "
                    f"natural gradient norm {gnorm:.3g})",
                )
                break
            if bb:
                prev = (s, sgs)
            t_prev, f_new, state, s = accepted
            losses.append(f_new)
        else:
            state, s = advance(state, s, g, lr)
            if loss_fn is not None:
                f_new = evaluate(s)
                rises = rises + 1 if f_new > losses[-1] else 0
                losses.append(f_new)
                if rises >= max_rises and not warned_rise and warn:
                    warned_rise = True
                    warnings.warn(
                        f"spd.minimize({method!r}, lr={lr}): the loss rose for {rises} "
                        f"consecutive steps (step {k + 1}); lr may be too large — omit it "
                        "to use the line search",
                        LossIncreaseWarning,
                        stacklevel=2,
                    )
        k += 1
        if losses:
            f_old, f_new = losses[-2], losses[-1]
            if not math.isfinite(f_new) or (target is not None and f_new <= target):
                break
            if abs(f_old - f_new) <= ftol * max(abs(f_old), abs(f_new)):
                reason = "ftol"
                detail = (
                    f"relative loss change ≤ ftol = {ftol:.3g} after {k} steps (loss {f_new:.3g})"
                )
                break
        if callback is not None and callback(k, s):
            reason, detail = "callback", f"stopped by the callback after {k} steps"
            break
    converged, message = _verdict(losses, steps, target, reason, detail)
    if warn and target is not None and not converged:
        what = f"lr={lr}" if not line_search else "line search"
        warnings.warn(f"spd.minimize({method!r}, {what}): {message}", RuntimeWarning, stacklevel=2)
    return SPDResult(s, state, losses, converged, message, k, nfev, gnorm)


def iterations_to(losses: Sequence[float], tol: float) -> int | None:
    """First ``k`` with ``losses[k] ≤ tol`` (``k`` = number of steps taken), or None.

    Example::

        >>> from spectral_curv import spd
        >>> spd.iterations_to([3.0, 1.0, 0.1, 0.01], 0.5), spd.iterations_to([3.0, 1.0], 0.5)
        (2, None)
    """
    for k, v in enumerate(losses):
        if v <= tol:
            return k
    return None


# ---------------------------------------------------------------------- the problems


def _numpy() -> Any:
    import numpy as np

    return np


def _random_spd(rng: Any, n: int, cond: float) -> Any:
    """``U Diag(λ) Uᵀ`` (numpy), ``U`` Haar-random, ``λ`` log-spaced with ``λ_max/λ_min = cond``."""
    np = _numpy()
    u, r = np.linalg.qr(rng.standard_normal((n, n)))
    u = u * np.sign(np.diag(r))[None, :]
    lam = np.exp(np.linspace(-0.5, 0.5, n) * math.log(cond))
    q = (u * lam[None, :]) @ u.T
    return 0.5 * (q + q.T)


def _to(xp: Namespace | None, a: Any, dtype: Any, device: Any) -> Array:
    if xp is None:
        xp = array_namespace(_numpy().empty(0))
    dtype = xp.float64 if dtype is None else dtype
    return xp.asarray(a, dtype=dtype, device=device)


def _start(rng: Any, n: int, start: str | Any) -> Any:
    np = _numpy()
    if isinstance(start, str):
        if start == "identity":
            return np.eye(n)
        if start == "random":
            return _random_spd(rng, n, 4.0)
        raise ValueError(f"`start` must be 'identity', 'random' or an SPD matrix, got {start!r}")
    return np.asarray(start, dtype=np.float64)


class MetricNearness(NamedTuple):
    """Metric nearness ``f(S) = (1/2N) Σ ‖S Q x_i − x_i‖²`` (Fig. 3; Brickell et al. 2008).

    ``X`` is ``(n, N)`` (samples as columns), ``Y = Q X``. ``S_star = Q⁻¹``, ``f_star = 0``
    (module docstring). ``s0`` is the start used by the experiments.

    Example (``f`` is the mean squared residual; it and its gradient vanish at ``S* = Q⁻¹``)::

        >>> import numpy as np
        >>> from spectral_curv import spd
        >>> prob = spd.metric_nearness(4, 50, seed=0)
        >>> r = prob.Y - prob.X  # residuals at S = I
        >>> bool(np.isclose(prob.loss(np.eye(4)), np.sum(r * r) / 100))
        True
        >>> bool(prob.gap(prob.S_star) < 1e-20), bool(np.allclose(prob.grad(prob.S_star), 0.0))
        (True, True)
        >>> prob.sampler(10, seed=1)(prob.s0).shape
        (4, 4)
    """

    Q: Array
    X: Array
    Y: Array
    S_star: Array
    f_star: float
    s0: Array

    def loss(self, s: Array) -> Array:
        """``‖S Y − X‖_F² / (2N)`` over all ``N`` samples."""
        xp = array_namespace(s)
        r = s @ self.Y - self.X
        return xp.sum(r * r) / (2.0 * self.X.shape[1])

    def gap(self, s: Array) -> Array:
        """``f(S) − f(S*)``."""
        return self.loss(s) - self.f_star

    def grad(self, s: Array, idx: Array | None = None) -> Array:
        """``sym((S Y_b − X_b) Y_bᵀ)/b`` on the columns ``idx`` (all ``N`` when None)."""
        xp = array_namespace(s)
        x, y = self.X, self.Y
        if idx is not None:
            x = xp.take(x, idx, axis=1)
            y = xp.take(y, idx, axis=1)
        g = ((s @ y - x) @ y.mT) / x.shape[1]
        return 0.5 * (g + g.mT)

    def sampler(self, batch_size: int, *, seed: int = 0) -> Callable[[Array], Array]:
        """``grad_fn(S)`` observing ``batch_size`` random samples (without replacement) per call.

        The index sequence is fixed by ``seed`` (a fresh sampler replays it), so different
        methods see the same partially observed data.
        """
        n_samples = self.X.shape[1]
        if not isinstance(batch_size, int) or not 1 <= batch_size <= n_samples:
            raise ValueError(f"`batch_size` must be an int in [1, {n_samples}], got {batch_size!r}")
        rng = _numpy().random.default_rng(seed)
        xp = array_namespace(self.X)
        dev = A.device(self.X)

        def grad_fn(s: Array) -> Array:
            idx = rng.choice(n_samples, size=batch_size, replace=False)
            return self.grad(s, xp.asarray(idx, dtype=xp.int64, device=dev))

        return grad_fn


def metric_nearness(
    n: int = 60,
    n_samples: int = 1000,
    *,
    cond: float = 10.0,
    seed: int = 0,
    start: str | Any = "random",
    xp: Namespace | None = None,
    dtype: Any = None,
    device: Any = None,
) -> MetricNearness:
    """The metric-nearness problem of Fig. 3 (``n = 60``): random SPD ``Q`` (condition number
    ``cond``), ``x_i ~ N(0, I)``; ``start`` is ``"random"`` (a random SPD matrix with
    condition number 4, the same for every method), ``"identity"`` or an explicit matrix.
    Data are drawn with numpy (``seed``) and converted to ``xp`` (numpy by default).

    Example::

        >>> import numpy as np
        >>> from spectral_curv import spd
        >>> prob = spd.metric_nearness(4, 50, cond=10.0, seed=0)
        >>> prob.Q.shape, prob.X.shape, round(float(np.linalg.cond(prob.Q)), 6)
        ((4, 4), (4, 50), 10.0)
        >>> bool(np.allclose(prob.S_star @ prob.Q, np.eye(4))), prob.f_star
        (True, 0.0)
    """
    np = _numpy()
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    if not isinstance(n_samples, int) or n_samples < n:
        raise ValueError(
            f"`n_samples` must be an int >= n = {n} (full-rank X Xᵀ), got {n_samples!r}"
        )
    A.check_positive("cond", cond)
    rng = np.random.default_rng(seed)
    q = _random_spd(rng, n, cond)
    x = rng.standard_normal((n, n_samples))
    s0 = _start(rng, n, start)
    s_star = np.linalg.inv(q)
    s_star = 0.5 * (s_star + s_star.T)
    q_, x_, qx_, s_star_ = (_to(xp, a, dtype, device) for a in (q, x, q @ x, s_star))
    return MetricNearness(q_, x_, qx_, s_star_, 0.0, _to(xp, s0, dtype, device))


class LogDet(NamedTuple):
    """Log-det problem ``f(S) = Tr(SQ) − log det S`` (Fig. 3; Han et al. 2021).

    ``S_star = Q⁻¹``, ``f_star = n + log det Q``.

    Example (``f* = f(S*)`` and ``∇f(S*) = 0``)::

        >>> import numpy as np
        >>> from spectral_curv import spd
        >>> prob = spd.log_det(4, seed=0)
        >>> bool(np.isclose(prob.loss(prob.S_star), prob.f_star))
        True
        >>> bool(np.allclose(prob.grad(prob.S_star), 0.0))
        True
        >>> float(prob.loss(np.diag([1.0, 1.0, 1.0, -1.0])))
        inf
    """

    Q: Array
    S_star: Array
    f_star: float
    s0: Array

    def loss(self, s: Array) -> Array:
        """``Tr(SQ) − log det S = Tr(SQ) − Σ log λ_i(S)`` (``eigvalsh``); ``+inf`` unless ``S ≻ 0``.

        ``f`` is ``+∞`` off the SPD cone. ``slogdet``'s ``log|det S|`` would give a finite,
        possibly negative "gap" for an indefinite ``S`` (e.g. after an overshooting
        ``exp="first_order"`` spectral step, ``d_i < 0``), which a stopping rule reads as
        converged; a sign check of ``det S`` misses an even number of negative eigenvalues.
        """
        xp = array_namespace(s)
        w = xp.linalg.eigvalsh(0.5 * (s + s.mT))
        pd = xp.min(w) > 0
        ld = xp.sum(xp.log(xp.where(w > 0, w, 1.0)))
        return xp.where(pd, xp.sum(s * self.Q) - ld, math.inf)

    def gap(self, s: Array) -> Array:
        """``f(S) − f(S*)``."""
        return self.loss(s) - self.f_star

    def grad(self, s: Array) -> Array:
        """``Q − S⁻¹``."""
        xp = array_namespace(s)
        inv = xp.linalg.inv(s)
        return self.Q - 0.5 * (inv + inv.mT)


def log_det(
    n: int = 60,
    *,
    cond: float = 10.0,
    seed: int = 0,
    start: str | Any = "random",
    xp: Namespace | None = None,
    dtype: Any = None,
    device: Any = None,
) -> LogDet:
    """The log-det problem of Fig. 3 (``n = 60``): random SPD ``Q`` with condition number
    ``cond``; ``start`` as in :func:`metric_nearness`. ``f* = n + log det Q`` in float64.

    Example (``f* = n + log det Q``; ``Q`` has the requested condition number)::

        >>> import numpy as np
        >>> from spectral_curv import spd
        >>> prob = spd.log_det(4, cond=10.0, seed=0, start="identity")
        >>> bool(np.isclose(prob.f_star, 4 + np.linalg.slogdet(prob.Q)[1]))
        True
        >>> round(float(np.linalg.cond(prob.Q)), 6), bool(np.array_equal(prob.s0, np.eye(4)))
        (10.0, True)
    """
    np = _numpy()
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    A.check_positive("cond", cond)
    rng = np.random.default_rng(seed)
    q = _random_spd(rng, n, cond)
    s0 = _start(rng, n, start)
    s_star = np.linalg.inv(q)
    s_star = 0.5 * (s_star + s_star.T)
    f_star = float(n + np.linalg.slogdet(q)[1])
    return LogDet(
        _to(xp, q, dtype, device),
        _to(xp, s_star, dtype, device),
        f_star,
        _to(xp, s0, dtype, device),
    )


def _eigh_fn(np: Any, m: Any, fn: Callable[[Any], Any]) -> Any:
    """``V fn(Λ) Vᵀ`` for a symmetric (stack of) matrix ``m`` (numpy, ``eigh``)."""
    w, v = np.linalg.eigh(0.5 * (m + np.swapaxes(m, -1, -2)))
    return (v * fn(w)[..., None, :]) @ np.swapaxes(v, -1, -2)


def _karcher_reference(a: Any, *, tol: float = 1e-12, max_iter: int = 1000) -> Any:
    """Riemannian (affine-invariant) mean of the stack ``a`` by the fixed-point iteration
    ``S ← S^{1/2} expm((1/N) Σ logm(S^{-1/2} A_i S^{-1/2})) S^{1/2}`` (numpy ``eigh``),
    started at the log-Euclidean mean, run until the step ``‖(1/N) Σ logm(·)‖_F ≤ tol`` and then
    three more times (the step's round-off floor is ≈ 1e-14; it contracts ≈ 8× per iteration)."""
    np = _numpy()
    s = _eigh_fn(np, np.mean(_eigh_fn(np, a, np.log), axis=0), np.exp)
    extra = 3
    for _ in range(max_iter):
        r = _eigh_fn(np, s, np.sqrt)
        ri = _eigh_fn(np, s, lambda w: 1.0 / np.sqrt(w))
        t = np.mean(_eigh_fn(np, ri @ a @ ri, np.log), axis=0)
        s = r @ _eigh_fn(np, t, np.exp) @ r
        s = 0.5 * (s + s.T)
        if np.linalg.norm(t) <= tol:
            if extra == 0:
                return s
            extra -= 1
    raise RuntimeError(f"Karcher fixed-point iteration did not converge in {max_iter} steps")


class KarcherMean(NamedTuple):
    """Riemannian (affine-invariant) Karcher mean of SPD matrices ``A_1 … A_N``:
    ``f(S) = (1/2N) Σ ‖log(A_i^{-1/2} S A_i^{-1/2})‖_F²``.

    ``A`` is the ``(N, n, n)`` stack, ``A_isqrt`` the stack of ``A_i^{-1/2}``. ``f`` is
    geodesically strictly convex, so its minimiser, the Karcher mean ``S_star``, is unique
    (computed by the fixed-point iteration of :func:`karcher_mean`); ``f_star = f(S_star)``.
    ``rel_error(S) = ‖S − S*‖_F / ‖S*‖_F`` is the convergence measure of the experiments.

    With ``M_i = A_i^{-1/2} S A_i^{-1/2} = V_i Diag(λ) V_iᵀ`` the Euclidean gradient is
    ``∇f(S) = (1/N) Σ S⁻¹ log(S A_i⁻¹) = (1/N) Σ A_i^{-1/2} V_i Diag(log λ / λ) V_iᵀ A_i^{-1/2}``
    (symmetric as written: ``M_i⁻¹`` and ``log M_i`` commute).

    Example (``f* = f(S*)``, ``∇f(S*) = 0``; the mean of a single matrix is that matrix)::

        >>> import numpy as np
        >>> from spectral_curv import spd
        >>> prob = spd.karcher_mean(4, 5, seed=0)
        >>> bool(np.isclose(prob.loss(prob.S_star), prob.f_star))
        True
        >>> bool(np.linalg.norm(prob.grad(prob.S_star)) < 1e-12), float(prob.rel_error(prob.S_star))
        (True, 0.0)
        >>> one = spd.karcher_mean(3, 1, seed=0)
        >>> bool(np.allclose(one.S_star, one.A[0])), bool(abs(one.f_star) < 1e-20)
        (True, True)
    """

    A: Array
    A_isqrt: Array
    S_star: Array
    f_star: float
    s0: Array

    def _eig(self, s: Array) -> tuple[Array, Array]:
        xp = array_namespace(s)
        m = self.A_isqrt @ s[None, ...] @ self.A_isqrt
        return xp.linalg.eigh(0.5 * (m + m.mT))

    def loss(self, s: Array) -> Array:
        """``(1/2N) Σ Σ_k log² λ_k(A_i^{-1/2} S A_i^{-1/2})``; ``+inf`` unless ``S ≻ 0``."""
        xp = array_namespace(s)
        w, _ = self._eig(s)
        pd = xp.min(w) > 0
        lg = xp.log(xp.where(w > 0, w, 1.0))
        return xp.where(pd, xp.sum(lg * lg) / (2.0 * self.A.shape[0]), math.inf)

    def gap(self, s: Array) -> Array:
        """``f(S) − f(S*)``."""
        return self.loss(s) - self.f_star

    def rel_error(self, s: Array) -> Array:
        """``‖S − S*‖_F / ‖S*‖_F``."""
        xp = array_namespace(s)
        return xp.linalg.vector_norm(s - self.S_star) / xp.linalg.vector_norm(self.S_star)

    def grad(self, s: Array) -> Array:
        """``(1/N) Σ S⁻¹ log(S A_i⁻¹)`` (symmetric; see the class docstring)."""
        xp = array_namespace(s)
        w, v = self._eig(s)
        h = (v * (xp.log(w) / w)[..., None, :]) @ v.mT
        g = xp.mean(self.A_isqrt @ h @ self.A_isqrt, axis=0)
        return 0.5 * (g + g.mT)


def karcher_mean(
    n: int = 10,
    n_matrices: int = 20,
    *,
    cond: float = 10.0,
    seed: int = 0,
    start: str | Any = "random",
    xp: Namespace | None = None,
    dtype: Any = None,
    device: Any = None,
) -> KarcherMean:
    """Karcher-mean problem: ``n_matrices`` random ``n×n`` SPD ``A_i`` (each ``U Diag(λ) Uᵀ``,
    ``U`` Haar-random, ``λ`` log-spaced with condition number ``cond``); ``start`` as in
    :func:`metric_nearness`. ``S*`` is the fixed point of
    ``S ← S^{1/2} expm((1/N) Σ logm(S^{-1/2} A_i S^{-1/2})) S^{1/2}`` (numpy ``eigh``, float64,
    run to a step ``≤ 1e-12``, then three more). Data are drawn with numpy (``seed``) and
    converted to ``xp``.

    Example (``S*`` is the fixed point: the mean of the logs seen from ``S*`` vanishes)::

        >>> import numpy as np
        >>> from spectral_curv import spd
        >>> prob = spd.karcher_mean(seed=0)
        >>> prob.A.shape, prob.s0.shape
        ((20, 10, 10), (10, 10))
        >>> w, v = np.linalg.eigh(prob.S_star)
        >>> ri = (v / np.sqrt(w)) @ v.T
        >>> mu, u = np.linalg.eigh(ri @ prob.A @ ri)
        >>> t = np.mean((u * np.log(mu)[:, None, :]) @ np.swapaxes(u, 1, 2), axis=0)
        >>> bool(np.linalg.norm(t) < 1e-13)
        True
    """
    np = _numpy()
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    if not isinstance(n_matrices, int) or n_matrices < 1:
        raise ValueError(f"`n_matrices` must be a positive int, got {n_matrices!r}")
    A.check_positive("cond", cond)
    rng = np.random.default_rng(seed)
    a = np.stack([_random_spd(rng, n, cond) for _ in range(n_matrices)])
    s0 = _start(rng, n, start)
    a_isqrt = _eigh_fn(np, a, lambda w: 1.0 / np.sqrt(w))
    s_star = _karcher_reference(a)
    prob = KarcherMean(a, a_isqrt, s_star, 0.0, s0)
    f_star = float(prob.loss(s_star))
    return KarcherMean(
        _to(xp, a, dtype, device),
        _to(xp, a_isqrt, dtype, device),
        _to(xp, s_star, dtype, device),
        f_star,
        _to(xp, s0, dtype, device),
    )


class GaussianML(NamedTuple):
    """Gaussian maximum likelihood with a trace penalty (math §6.4):
    ``f(Σ) = log det Σ + tr(Σ⁻¹C) + λ tr(Σ)`` over covariances ``Σ ≻ 0``, ``C`` the sample
    covariance (``2/N`` times the negative log-likelihood of ``N(0, Σ)``, up to a constant,
    plus the penalty).

    Gradient ``Σ⁻¹ − Σ⁻¹CΣ⁻¹ + λI``; it vanishes where ``λΣ² + Σ = C`` (multiply by ``Σ``
    on both sides), so ``Σ*`` shares ``C``'s eigenvectors with eigenvalues
    ``σ = (√(1 + 4λc) − 1)/(2λ)`` (closed form; unique: ``log det`` is geodesically linear,
    ``tr(Σ⁻¹C)`` and ``tr(Σ)`` geodesically convex). ``S_star = Σ*``, ``f_star = f(Σ*)``.

    Example (``f* = f(Σ*)``, ``∇f(Σ*) = 0``, ``λΣ*² + Σ* = C``)::

        >>> import numpy as np
        >>> from spectral_curv import spd
        >>> prob = spd.gaussian_ml(5, seed=0)
        >>> bool(np.isclose(prob.loss(prob.S_star), prob.f_star))
        True
        >>> bool(np.allclose(prob.grad(prob.S_star), 0.0, atol=1e-12))
        True
        >>> s = prob.S_star
        >>> bool(np.allclose(prob.lam * s @ s + s, prob.C))
        True
    """

    C: Array
    lam: float
    S_star: Array
    f_star: float
    s0: Array

    def loss(self, s: Array) -> Array:
        """``log det Σ + tr(Σ⁻¹C) + λ tr(Σ)`` (``eigh``); ``+inf`` unless ``Σ ≻ 0``."""
        xp = array_namespace(s)
        w, v = xp.linalg.eigh(0.5 * (s + s.mT))
        pd = xp.min(w) > 0
        ws = xp.where(w > 0, w, 1.0)
        vcv = v.mT @ self.C @ v
        inner = xp.sum(xp.linalg.diagonal(vcv) / ws)
        val = xp.sum(xp.log(ws)) + inner + self.lam * xp.sum(ws)
        return xp.where(pd, val, math.inf)

    def gap(self, s: Array) -> Array:
        """``f(Σ) − f(Σ*)``."""
        return self.loss(s) - self.f_star

    def rel_error(self, s: Array) -> Array:
        """``‖Σ − Σ*‖_F / ‖Σ*‖_F``."""
        xp = array_namespace(s)
        return xp.linalg.vector_norm(s - self.S_star) / xp.linalg.vector_norm(self.S_star)

    def grad(self, s: Array) -> Array:
        """``Σ⁻¹ − Σ⁻¹CΣ⁻¹ + λI``."""
        xp = array_namespace(s)
        inv = xp.linalg.inv(s)
        inv = 0.5 * (inv + inv.mT)
        g = inv - inv @ self.C @ inv + self.lam * A.eye(xp, s.shape[-1], s)
        return 0.5 * (g + g.mT)


def gaussian_ml(
    n: int = 20,
    n_samples: int = 100,
    *,
    lam: float = 0.1,
    cond: float = 10.0,
    seed: int = 0,
    start: str | Any = "random",
    xp: Namespace | None = None,
    dtype: Any = None,
    device: Any = None,
) -> GaussianML:
    """Gaussian ML with a trace penalty (:class:`GaussianML`): ``n_samples`` draws from
    ``N(0, Σ_true)`` (``Σ_true`` random SPD, condition number ``cond``), ``C = XXᵀ/N``,
    penalty ``lam``; ``start`` as in :func:`metric_nearness`. Closed-form optimum (math §6.4).

    Example::

        >>> from spectral_curv import spd
        >>> prob = spd.gaussian_ml(4, 10, lam=0.5, seed=1)
        >>> prob.C.shape, prob.lam, bool(prob.gap(prob.s0) > 0)
        ((4, 4), 0.5, True)
    """
    np = _numpy()
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"`n_samples` must be a positive int, got {n_samples!r}")
    A.check_positive("lam", lam)
    A.check_positive("cond", cond)
    rng = np.random.default_rng(seed)
    sigma = _random_spd(rng, n, cond)
    w, v = np.linalg.eigh(sigma)
    x = (v * np.sqrt(w)[None, :]) @ v.T @ rng.standard_normal((n, n_samples))
    c = x @ x.T / n_samples
    c = 0.5 * (c + c.T)
    s0 = _start(rng, n, start)
    cw, cv = np.linalg.eigh(c)
    sw = (np.sqrt(1.0 + 4.0 * lam * cw) - 1.0) / (2.0 * lam)
    s_star = (cv * sw[None, :]) @ cv.T
    s_star = 0.5 * (s_star + s_star.T)
    prob = GaussianML(c, float(lam), s_star, 0.0, s0)
    f_star = float(prob.loss(s_star))
    return GaussianML(
        _to(xp, c, dtype, device),
        float(lam),
        _to(xp, s_star, dtype, device),
        f_star,
        _to(xp, s0, dtype, device),
    )


def __getattr__(name: str) -> Any:
    """Deprecated aliases of the baselines' steps, which moved to :mod:`.baselines` (math §6),
    with a DeprecationWarning; removed in 0.2."""
    if name in ("rgd_step", "cholesky_step"):
        warnings.warn(
            f"spectral_curv.spd.{name} moved to spectral_curv.baselines.{name}; the alias goes "
            "in 0.2",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(baselines, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
