"""Optax adapter: :func:`scale_by_spectral_kron` and the full optimizer :func:`spectral_kron`.

The math is the core's (math §3 diagonal scheme, §4 Kronecker scheme, §5 damping, ties and
the normalised factor step), reached through :mod:`spectral_curv.optim`; this module owns
only the optax state pytree, parameter routing and jit-safe control flow (``lax.cond`` for
the first step, the refresh and the re-orthonormalisation). The semantics are those of
:class:`spectral_curv.torch.SpectralKron` (same defaults, same step order), so both give
the same trajectory to round-off:

- leaves of order ≥ 2: Kronecker factors on ``(shape[0], prod(shape[1:]))`` (math §4), a
  side longer than ``max_precond_dim`` kept diagonal;
- leaves of order ≤ 1 (biases, scalars): the diagonal scheme (math §3).

Usage::

    >>> import jax, jax.numpy as jnp, optax
    >>> from spectral_curv.optax import spectral_kron
    >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    >>> opt = spectral_kron(learning_rate=1e-2)
    >>> state = opt.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = jax.jit(opt.update)(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

The preconditioner alone chains with any optax transform::

    optax.chain(scale_by_spectral_kron(0.1), optax.add_decayed_weights(1e-4),
                optax.scale_by_learning_rate(1e-3))

``optax.inject_hyperparams(spectral_kron)(learning_rate=..., precond_lr=..., momentum=...,
weight_decay=...)`` works under ``jax.jit``: every float hyperparameter and
``update_interval``/``precond_warmup`` may be traced. ``max_precond_dim`` decides the
state's structure, so ``init`` must then run eagerly (not under ``jit``) or the name be in
``static_args``; the same holds for ``cayley_terms`` with ``cayley="neumann"``. A callable
``label_fn`` and a dtype given as a scalar type (``jnp.bfloat16``) look like schedules to
``inject_hyperparams``: list them in ``static_args`` too (or pass ``jnp.dtype(...)``).
:data:`STATIC_ARGS` names all of these.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import diag, kron, optim

__all__ = [
    "SPECTRAL",
    "STATIC_ARGS",
    "ClipByUpdateRmsState",
    "MomentumState",
    "ScaleBySpectralKronState",
    "clip_by_update_rms",
    "heavy_ball",
    "order_labels",
    "scale_by_spectral_kron",
    "spectral_kron",
    "validate_state",
]

#: The label :func:`spectral_kron` routes to the spectral optimizer (see ``others``).
SPECTRAL = "spectral"

#: Arguments of :func:`spectral_kron` to pass as ``static_args`` to
#: ``optax.inject_hyperparams`` when they are set (or when ``init`` runs under ``jit``).
STATIC_ARGS = (
    "max_precond_dim",
    "reorth_interval",
    "cayley_terms",
    "precond_dtype",
    "mu_dtype",
    "label_fn",
)

#: The defaults of every option (``optim.Options``: one name and one default everywhere).
_D = optim.Options()


class ScaleBySpectralKronState(NamedTuple):
    """State of :func:`scale_by_spectral_kron` (a pytree).

    ``count``: steps taken (the 0-based step ``t`` of the next update); ``refreshes``:
    preconditioner refreshes so far; ``rejected``: per leaf, refreshes discarded by
    keep-last-good; ``precond``: per leaf a ``kron.KronState`` or ``diag.DiagState`` in
    ``precond_dtype``; ``exp_avg``/``exp_avg_sq``: Adam's moments for grafting (``None``
    without grafting); ``skipped``: steps skipped for a non-finite gradient (``nonfinite``).

    Example (one step with and one without Adam grafting)::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import scale_by_spectral_kron
        >>> grads = {"w": jnp.ones((4, 3))}
        >>> tx = scale_by_spectral_kron(0.1)
        >>> _, state = tx.update(grads, tx.init(grads))
        >>> type(state).__name__, int(state.count), state.exp_avg is None
        ('ScaleBySpectralKronState', 1, True)
        >>> tx = scale_by_spectral_kron(0.1, graft="adam")
        >>> tx.init(grads).exp_avg["w"].shape
        (4, 3)
    """

    count: jax.Array
    refreshes: jax.Array
    rejected: Any
    precond: Any
    exp_avg: Any
    exp_avg_sq: Any
    skipped: jax.Array = jnp.zeros([], jnp.int32)


class ClipByUpdateRmsState(NamedTuple):
    """:func:`clip_by_update_rms` is stateless.

    Example::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import ClipByUpdateRmsState, clip_by_update_rms
        >>> state = clip_by_update_rms(1.0).init({"w": jnp.zeros(3)})
        >>> state == ClipByUpdateRmsState(), len(state)
        (True, 0)
    """


class MomentumState(NamedTuple):
    """Heavy-ball buffer of :func:`heavy_ball` (per leaf, in ``mu_dtype``).

    Example (zeros shaped like the parameters)::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import heavy_ball
        >>> state = heavy_ball(0.9, mu_dtype=jnp.float32).init({"w": jnp.ones((2, 3))})
        >>> type(state).__name__, state.momentum["w"].shape, float(state.momentum["w"].sum())
        ('MomentumState', (2, 3), 0.0)
    """

    momentum: Any


# --------------------------------------------------------------------------- validation


def _dtype(name: str, v: Any, allow_none: bool = False) -> Any:
    if v is None and allow_none:
        return None
    try:
        dt = jnp.dtype(v)
    except TypeError as e:
        raise ValueError(f"`{name}` must be a floating dtype, got {v!r}") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"`{name}` must be a floating dtype, got {v!r}")
    return dt


def _check_precond_options(o: dict[str, Any]) -> None:
    """Raise a ValueError naming the first invalid option of :func:`scale_by_spectral_kron`."""
    optim.check_options(o)
    optim.check_precond_dtype(o["precond_dtype"])
    _dtype("precond_dtype", o["precond_dtype"], allow_none=True)
    if o["nonfinite"] not in optim.NONFINITE:
        raise ValueError(f"`nonfinite` must be one of {optim.NONFINITE}, got {o['nonfinite']!r}")


def _all_finite(leaves: list[Any]) -> jax.Array:
    ok = jnp.asarray(True)
    for x in leaves:
        ok = ok & jnp.all(jnp.isfinite(x))
    return ok


def _on_host(fn: Callable[[Any], None], flag: Any, traced: bool) -> None:
    """``fn(flag)`` now (eager), or under ``jit`` from a host callback inside a ``lax.cond``
    on ``flag``: the device sends nothing to the host unless ``flag`` is set."""
    if not traced:
        fn(flag)
    else:
        jax.lax.cond(flag, lambda: jax.debug.callback(fn, True), lambda: None)


def _raise_if(bad: Any) -> None:
    if bool(bad):
        raise ValueError(
            "spectral_kron: a gradient contains NaN or inf; the state was kept and the update "
            "zeroed (pass nonfinite='skip' to skip such steps without an error)"
        )


# --------------------------------------------------------------------------- helpers


def _static_int(v: Any) -> int | None:
    """``v`` as a Python int, or None when it is a traced array (value unknown at trace time)."""
    try:
        return int(v)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return None


def _hp(v: Any, dtype: Any) -> Any:
    """A hyperparameter in the computation's dtype: arrays (e.g. from ``inject_hyperparams``,
    cast to the params' dtype there) are cast, Python numbers stay weakly typed."""
    if isinstance(v, (jax.Array, np.ndarray)):
        return jnp.asarray(v, dtype=dtype)
    return v


def _cast_like(new: Any, old: Any) -> Any:
    """``new`` with the dtypes of ``old`` (keeps ``lax.cond`` branches and the state stable)."""
    return jax.tree.map(lambda n, o: jnp.asarray(n, dtype=o.dtype), new, old)


def _is_precond(x: Any) -> bool:
    return isinstance(x, (kron.KronState, diag.DiagState))


def _schedule(
    count: jax.Array,
    refreshes: jax.Array,
    *,
    update_interval: Any,
    precond_warmup: Any,
    reorth_interval: Any,
    cayley: str,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``optim.schedule`` on the (traced) counters; a traced ``reorth_interval`` is fine."""
    r = _static_int(reorth_interval)
    return optim.schedule(
        count,
        refreshes,
        update_interval=update_interval,
        precond_warmup=precond_warmup,
        reorth_interval=r if r is not None else reorth_interval,
        cayley=cayley,
    )


# --------------------------------------------------------------------------- transforms


def scale_by_spectral_kron(
    precond_lr: Any = _D.precond_lr,
    *,
    p: Any = _D.p,
    gamma: Any = _D.gamma,
    damping: Any = _D.damping,
    update_interval: Any = _D.update_interval,
    precond_warmup: Any = _D.precond_warmup,
    reorth_interval: Any = _D.reorth_interval,
    cayley: str = _D.cayley,
    cayley_terms: Any = _D.cayley_terms,
    exp: str = _D.exp,
    tie_tol: Any = _D.tie_tol,
    max_step_norm: Any = _D.max_step_norm,
    rotation: str = _D.rotation,
    step_scale: str = _D.step_scale,
    max_precond_dim: Any = _D.max_precond_dim,
    precond_dtype: Any = _D.precond_dtype,
    graft: str | None = _D.graft,
    graft_betas: tuple[Any, Any] = _D.graft_betas,
    graft_eps: Any = _D.graft_eps,
    nonfinite: str = _D.nonfinite,
    betas: Any = None,
    eps: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Precondition each gradient leaf with its spectral factors (math §3–§5), nothing else.

    Per step ``t`` (``state.count``) the engine's ``optim.precondition_step`` runs on all
    leaves with ``lax.cond`` for its three flags: ``first_state`` on the first step,
    ``refresh`` (keep-last-good; rejected refreshes counted) and ``reorthonormalize`` when
    due, ``U = S^{-1/p} G``; then optional Adam grafting (``graft="adam"``). ``U`` has each
    gradient leaf's dtype; the factors live in ``precond_dtype`` (None: the leaf's dtype
    promoted to float32).

    A non-finite gradient (any leaf): the state is kept (``skipped`` counts it) and the
    update is zero, under ``jit`` too. A rejected refresh (keep-last-good) is counted in
    ``rejected`` and warned once per transform (``optim.RejectedRefreshWarning``; from a
    host callback under ``jit``). ``nonfinite="raise"`` (default) also raises a
    ValueError, at once when the gradients are concrete, and from a host callback under
    ``jit`` (it reaches the caller as a ``JaxRuntimeError`` at the next sync).

    Chain it with the rest of an optimizer, e.g. ``optax.chain(scale_by_spectral_kron(),
    optax.add_decayed_weights(wd), optax.scale_by_learning_rate(lr))`` (no momentum), or
    use :func:`spectral_kron`. The options are ``optim.Options``; float options may be 0-d
    (traced) arrays; ``cayley``, ``exp``, ``rotation``, ``graft``, ``graft_betas``,
    ``nonfinite``, ``tie_tol=None``/``max_step_norm=None`` and ``precond_dtype`` must be
    Python values, ``max_precond_dim`` concrete at ``init`` (it fixes the state's
    structure) and ``cayley_terms`` concrete with ``cayley="neumann"``.

    Differentiating through ``update`` treats the preconditioner as a constant: the
    gradient fed to the refresh is wrapped in ``lax.stop_gradient``, so ``∂U/∂G = S^{-1/p}``
    (plus the grafting terms).

    Example (the state: Kronecker factors for the matrix, a diagonal for the bias)::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import scale_by_spectral_kron
        >>> params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
        >>> state = scale_by_spectral_kron(0.1).init(params)
        >>> w = state.precond["w"]
        >>> type(w).__name__, w.B_C.shape, w.B_K.shape
        ('KronState', (4, 4), (3, 3))
        >>> type(state.precond["b"]).__name__, state.precond["b"].d.shape, int(state.count)
        ('DiagState', (3,), 0)
    """
    graft_betas, graft_eps = _deprecated(betas, eps, graft_betas, graft_eps)
    opts = dict(
        precond_lr=precond_lr,
        p=p,
        gamma=gamma,
        damping=damping,
        update_interval=update_interval,
        precond_warmup=precond_warmup,
        reorth_interval=reorth_interval,
        cayley=cayley,
        cayley_terms=cayley_terms,
        exp=exp,
        tie_tol=tie_tol,
        max_step_norm=max_step_norm,
        rotation=rotation,
        step_scale=step_scale,
        max_precond_dim=max_precond_dim,
        precond_dtype=precond_dtype,
        graft=graft,
        graft_betas=graft_betas,
        graft_eps=graft_eps,
        nonfinite=nonfinite,
    )
    _check_precond_options(opts)
    pdt_opt = _dtype("precond_dtype", precond_dtype, allow_none=True)
    graft_betas = (graft_betas[0], graft_betas[1])

    warned = [False]

    def warn_once(rejected: Any) -> None:  # on the host (a callback under jit)
        if bool(rejected) and not warned[0]:
            warned[0] = True
            warnings.warn(optim.REJECTED_MESSAGE, optim.RejectedRefreshWarning, stacklevel=2)

    def pdt_of(x: Any) -> Any:
        return pdt_opt if pdt_opt is not None else jnp.promote_types(x.dtype, jnp.float32)

    def init_fn(params: Any) -> ScaleBySpectralKronState:
        dim = _static_int(max_precond_dim)
        if dim is None:
            raise ValueError(
                "`max_precond_dim` is traced, but it fixes the state's structure: call `init` "
                "outside jax.jit, or pass static_args=('max_precond_dim',) to "
                "optax.inject_hyperparams"
            )
        for x in jax.tree.leaves(params):
            if jnp.iscomplexobj(x) or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
                dt = jnp.result_type(x)
                raise TypeError(f"spectral_kron needs real floating parameters, got {dt}")

        def one(x: Any) -> optim.Precond:
            pl = optim.plan(tuple(x.shape), dim)
            shape = optim.matrix_shape(pl, tuple(x.shape))
            return optim.init(pl, shape, dtype=pdt_of(x), xp=jnp)

        moments = None
        if graft == "adam":
            moments = jax.tree.map(lambda x: jnp.zeros(x.shape, dtype=pdt_of(x)), params)
        return ScaleBySpectralKronState(
            count=jnp.zeros([], jnp.int32),
            refreshes=jnp.zeros([], jnp.int32),
            rejected=jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params),
            precond=jax.tree.map(one, params),
            exp_avg=moments,
            exp_avg_sq=moments,
            skipped=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: Any, state: ScaleBySpectralKronState, params: Any = None, **extra: Any
    ) -> tuple[Any, ScaleBySpectralKronState]:
        del params, extra
        terms = _static_int(cayley_terms)
        if terms is None:
            if cayley == "neumann":
                raise ValueError(
                    "`cayley_terms` is traced, but cayley='neumann' needs it as a Python int: "
                    "pass static_args=('cayley_terms',) to optax.inject_hyperparams"
                )
            terms = 1  # unused by the "exact" and "quadratic" maps
        leaves, treedef = jax.tree.flatten(updates)
        precs = treedef.flatten_up_to(state.precond)
        finite = _all_finite(leaves)
        traced = any(isinstance(x, jax.core.Tracer) for x in leaves)
        if nonfinite == "raise":
            _on_host(_raise_if, ~finite, traced)
        pdt = (
            jnp.result_type(*(s.d if isinstance(s, diag.DiagState) else s.alpha for s in precs))
            if precs
            else jnp.float32
        )
        o = optim.Options.trusted(
            {
                **{k: v for k, v in opts.items()},
                **{
                    k: _hp(opts[k], pdt)
                    for k in (
                        "precond_lr",
                        "gamma",
                        "damping",
                        "tie_tol",
                        "max_step_norm",
                        "p",
                        "graft_eps",
                    )
                },
                "cayley_terms": terms,
                "lr": 0.0,
                "momentum": 0.0,
                "weight_decay": 0.0,
                "max_update_rms": None,
                "reorth_interval": _reorth(reorth_interval),
            }
        )
        flags = optim.schedule(
            state.count,
            state.refreshes,
            update_interval=update_interval,
            precond_warmup=precond_warmup,
            reorth_interval=o.reorth_interval,
            cayley=cayley,
        )
        Gs = []
        for g, st in zip(leaves, precs):
            dt = st.d.dtype if isinstance(st, diag.DiagState) else st.alpha.dtype
            G = jnp.asarray(g, dtype=dt)
            if isinstance(st, kron.KronState):
                G = jnp.reshape(G, (st.d_C.shape[-1], st.d_K.shape[-1]))
            # a skipped step must not see NaN; the factors are constants under differentiation
            Gs.append(jax.lax.stop_gradient(jnp.where(finite, G, jnp.zeros_like(G))))
        new_precs, oks, _ = optim.precondition_step(
            precs,
            Gs,
            first=flags[0],
            refresh=flags[1],
            reorth=flags[2],
            options=o,
            cond=jax.lax.cond,
        )
        norm_p = 2.0 if step_scale == "p2" else None
        slots = (
            [None] * len(leaves)
            if graft != "adam"
            else list(
                zip(treedef.flatten_up_to(state.exp_avg), treedef.flatten_up_to(state.exp_avg_sq))
            )
        )
        step1 = (state.count + 1).astype(jnp.promote_types(pdt, jnp.float32))  # Adam's 1-based step
        out, new_slots = [], []
        for g, st, G, sl in zip(leaves, new_precs, Gs, slots):
            # the direction with the (non-stopped) gradient: ∂U/∂G = S^{-1/p}
            Gd = jnp.reshape(jnp.asarray(g, dtype=G.dtype), G.shape)
            u = jnp.reshape(optim.direction(st, Gd, p=o.p, norm_p=norm_p), g.shape)
            if graft == "adam":
                u, sl2 = optim.shape_direction(
                    u, jnp.reshape(Gd, g.shape), optim.Slots(u, *sl), step=step1, options=o
                )
                sl = (sl2.exp_avg.astype(sl[0].dtype), sl2.exp_avg_sq.astype(sl[1].dtype))
            out.append(u.astype(g.dtype))
            new_slots.append(sl)
        new_state = ScaleBySpectralKronState(
            count=optax.safe_int32_increment(state.count),
            refreshes=jnp.where(
                flags[1], optax.safe_int32_increment(state.refreshes), state.refreshes
            ),
            rejected=treedef.unflatten(
                [
                    r + (~ok).astype(jnp.int32)
                    for r, ok in zip(treedef.flatten_up_to(state.rejected), oks)
                ]
            ),
            precond=treedef.unflatten(new_precs),
            exp_avg=treedef.unflatten([s[0] for s in new_slots]) if graft == "adam" else None,
            exp_avg_sq=treedef.unflatten([s[1] for s in new_slots]) if graft == "adam" else None,
            skipped=state.skipped,
        )
        kept = state._replace(skipped=optax.safe_int32_increment(state.skipped))
        new_state = jax.tree.map(lambda n, k: jnp.where(finite, n, k), new_state, kept)
        out = [jnp.where(finite, u, jnp.zeros_like(u)) for u in out]
        rejected = finite & jnp.any(jnp.stack([~jnp.all(ok) for ok in oks] or [False]))
        _on_host(warn_once, rejected, traced)
        return treedef.unflatten(out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _skip_nonfinite(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` whose every state is kept (and update zeroed) on a non-finite gradient; the
    :class:`ScaleBySpectralKronState` inside decides for itself (it counts the skip)."""

    def update_fn(updates: Any, state: Any, params: Any = None, **extra: Any) -> tuple[Any, Any]:
        ok = _all_finite(jax.tree.leaves(updates))
        new_u, new_s = tx.update(updates, state, params, **extra)
        own = lambda x: isinstance(x, ScaleBySpectralKronState)  # noqa: E731

        def keep(n: Any, o: Any) -> Any:
            return n if own(n) else jax.tree.map(lambda a, b: jnp.where(ok, a, b), n, o)

        new_s = jax.tree.map(keep, new_s, state, is_leaf=own)
        return jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_u), new_s

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def validate_state(
    state: ScaleBySpectralKronState, params: Any, *, max_precond_dim: int = _D.max_precond_dim
) -> None:
    """Raise a ValueError naming the leaf and the field unless ``state`` (e.g. restored from a
    checkpoint) is a valid :func:`scale_by_spectral_kron` state for ``params``.

    Checks the tree structure, the counters (``0 ≤ rejected ≤ refreshes ≤ count``), and per
    leaf the factors against the leaf's plan (``optim.check_precond``: shapes, finite,
    ``α, d > 0``, ``Π d = 1``, orthogonal ``B``) and the graft moments. Reads values: call
    it eagerly, outside ``jit``.

    Example::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import scale_by_spectral_kron, validate_state
        >>> params = {"w": jnp.zeros((4, 3))}
        >>> state = scale_by_spectral_kron().init(params)
        >>> validate_state(state, params)
        >>> bad = state._replace(precond={"w": state.precond["w"]._replace(d_C=-jnp.ones(4))})
        >>> validate_state(bad, params)
        Traceback (most recent call last):
        ...
        ValueError: state leaf ['w']: `d_C` must be > 0
    """
    if not isinstance(state, ScaleBySpectralKronState):
        raise ValueError(f"expected a ScaleBySpectralKronState, got {type(state)!r}")
    paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    try:
        precs = treedef.flatten_up_to(state.precond)
        rejs = treedef.flatten_up_to(state.rejected)
    except (ValueError, TypeError) as e:
        raise ValueError(f"state does not match the params' tree structure: {e}") from e
    graft = state.exp_avg is not None
    moments = (
        zip(treedef.flatten_up_to(state.exp_avg), treedef.flatten_up_to(state.exp_avg_sq))
        if graft
        else [(None, None)] * len(precs)
    )
    o = optim.Options(graft="adam" if graft else None)
    for (path, x), pre, rej, (ea, eas) in zip(paths, precs, rejs, moments):
        where = f"state leaf {jax.tree_util.keystr(path)}"
        optim.check_counters(state.count, state.refreshes, rej, where=where)
        pl = optim.plan(tuple(x.shape), max_precond_dim)
        optim.check_precond(pre, pl, optim.matrix_shape(pl, tuple(x.shape)), where=where)
        slots = optim.Slots(jnp.zeros(x.shape), ea, eas)
        optim.check_slots(slots, tuple(x.shape), o, where=where)


def _deprecated(betas: Any, eps: Any, graft_betas: Any, graft_eps: Any) -> tuple[Any, Any]:
    """The graft constants, taking the deprecated ``betas``/``eps`` (``optim.renamed``)."""
    old = {k: v for k, v in (("betas", betas), ("eps", eps)) if v is not None}
    given = {"graft_betas": graft_betas != _D.graft_betas, "graft_eps": graft_eps != _D.graft_eps}
    for name, new_name in optim.DEPRECATED_NAMES.items():
        if name in old and given[new_name]:
            raise TypeError(f"got both `{name}` (deprecated) and `{new_name}`")
    new = optim.renamed(old, stacklevel=4)
    return new.get("graft_betas", graft_betas), new.get("graft_eps", graft_eps)


def _reorth(v: Any) -> Any:
    r = _static_int(v)
    return r if r is not None else v


def clip_by_update_rms(max_rms: Any) -> optax.GradientTransformation:
    """Cap each update leaf's RMS at ``max_rms`` (``optim.clip_rms``; stateless).

    Example (an RMS of 3 is scaled down to 1; an RMS under the cap passes unchanged)::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import clip_by_update_rms
        >>> tx = clip_by_update_rms(1.0)
        >>> updates = {"big": jnp.full((2, 2), 3.0), "small": jnp.full(2, 0.5)}
        >>> out, _ = tx.update(updates, tx.init(updates))
        >>> out["big"].tolist(), out["small"].tolist()
        ([[1.0, 1.0], [1.0, 1.0]], [0.5, 0.5])
    """
    if max_rms is None:
        raise ValueError("`max_update_rms` must be finite and > 0, got None")
    optim.check_options({"max_update_rms": max_rms})

    def init_fn(params: Any) -> ClipByUpdateRmsState:
        del params
        return ClipByUpdateRmsState()

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        return jax.tree.map(lambda u: optim.clip_rms(u, _hp(max_rms, u.dtype)), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def heavy_ball(momentum: Any, mu_dtype: Any = None) -> optax.GradientTransformation:
    """Undampened momentum ``m ← μ m + U`` (``optim.add_momentum``), output ``m``.

    The buffer is kept in ``mu_dtype`` (default: each update leaf's dtype; the torch
    optimizer keeps it in ``precond_dtype``, so pass ``jnp.float32`` for bf16 parameters
    to match it); the output has the incoming update's dtype.

    Example (two unit updates: ``m = 1``, then ``0.9·1 + 1 = 1.9``)::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import heavy_ball
        >>> tx, u = heavy_ball(0.9), {"w": jnp.ones(2)}
        >>> out1, state = tx.update(u, tx.init(u))
        >>> out2, state = tx.update(u, state)
        >>> out1["w"].tolist(), [round(float(x), 5) for x in out2["w"]]
        ([1.0, 1.0], [1.9, 1.9])
    """
    mdt = _dtype("mu_dtype", mu_dtype, allow_none=True)

    def init_fn(params: Any) -> MomentumState:
        return MomentumState(
            jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype if mdt is None else mdt), params)
        )

    def update_fn(updates: Any, state: MomentumState, params: Any = None) -> tuple[Any, Any]:
        del params
        bufs = jax.tree.map(
            lambda u, b: optim.add_momentum(b, u.astype(b.dtype), _hp(momentum, b.dtype)).astype(
                b.dtype
            ),
            updates,
            state.momentum,
        )
        out = jax.tree.map(lambda u, b: b.astype(u.dtype), updates, bufs)
        return out, MomentumState(bufs)

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- the optimizer


def order_labels(params: Any, *, min_order: int = 2, other: str = "other") -> Any:
    """A ``label_fn`` for :func:`spectral_kron`: :data:`SPECTRAL` for leaves of order ≥
    ``min_order``, ``other`` for the rest (e.g. to give biases and norms to AdamW).

    Example::

        >>> import jax.numpy as jnp
        >>> from spectral_curv.optax import order_labels
        >>> params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2), "s": jnp.zeros(())}
        >>> order_labels(params)
        {'b': 'other', 's': 'other', 'w': 'spectral'}
        >>> order_labels(params, min_order=1, other="adam")
        {'b': 'spectral', 's': 'adam', 'w': 'spectral'}
    """
    return jax.tree.map(lambda x: SPECTRAL if jnp.ndim(x) >= min_order else other, params)


def spectral_kron(
    learning_rate: Any,
    precond_lr: Any = _D.precond_lr,
    *,
    p: Any = _D.p,
    gamma: Any = _D.gamma,
    damping: Any = _D.damping,
    momentum: Any = _D.momentum,
    weight_decay: Any = _D.weight_decay,
    update_interval: Any = _D.update_interval,
    precond_warmup: Any = _D.precond_warmup,
    reorth_interval: Any = _D.reorth_interval,
    cayley: str = _D.cayley,
    cayley_terms: Any = _D.cayley_terms,
    exp: str = _D.exp,
    tie_tol: Any = _D.tie_tol,
    max_step_norm: Any = _D.max_step_norm,
    rotation: str = _D.rotation,
    step_scale: str = _D.step_scale,
    max_update_rms: Any = _D.max_update_rms,
    graft: str | None = _D.graft,
    graft_betas: tuple[Any, Any] = _D.graft_betas,
    graft_eps: Any = _D.graft_eps,
    max_precond_dim: Any = _D.max_precond_dim,
    precond_dtype: Any = _D.precond_dtype,
    nonfinite: str = _D.nonfinite,
    mu_dtype: Any = None,
    others: Mapping[str, optax.GradientTransformation] | None = None,
    label_fn: Callable[[Any], Any] | None = None,
    betas: Any = None,
    eps: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """The spectral Kronecker optimizer (Lin et al., ICML 2025), as torch's ``SpectralKron``.

    ``chain(scale_by_spectral_kron(...), clip_by_update_rms(max_update_rms) if set,
    heavy_ball(momentum, mu_dtype), add_decayed_weights(weight_decay),
    scale_by_learning_rate(learning_rate))``, i.e. per leaf
    ``U = S^{-1/p} G`` (grafted, clipped), ``m ← μm + U``, ``M ← M − lr (m + wd M)``.
    ``learning_rate`` may be a schedule. Leaves of order ≥ 2 get the Kronecker factors,
    order ≤ 1 the diagonal scheme (the routing of the torch optimizer). A non-finite
    gradient skips the whole step: every state is kept (momentum included) and the update
    is zero; ``nonfinite="raise"`` also raises (see :func:`scale_by_spectral_kron`).
    ``mu_dtype``: the momentum's dtype (default: each leaf's).

    Routing leaves elsewhere: ``others`` maps labels to complete optax optimizers (their
    own learning rate and sign included) and ``label_fn(params)`` returns a pytree of labels;
    leaves labelled :data:`SPECTRAL` get this optimizer, any other label ``L`` gets
    ``others[L]`` (``optax.partition``). With ``others`` and no ``label_fn``,
    :func:`order_labels` is used: order ≥ 2 spectral, the rest ``"other"``, e.g.
    ``spectral_kron(1e-3, others={"other": optax.adamw(1e-3)})``.

    Python-number hyperparameters are validated eagerly (a ValueError names the argument);
    see the module docstring for ``inject_hyperparams`` and :data:`STATIC_ARGS`.

    Example (biases routed to AdamW; the module docstring shows a jitted step)::

        >>> import jax.numpy as jnp, optax
        >>> from spectral_curv.optax import order_labels, spectral_kron
        >>> params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
        >>> order_labels(params)
        {'b': 'other', 'w': 'spectral'}
        >>> opt = spectral_kron(1e-2, others={"other": optax.adamw(1e-3)})
        >>> state = opt.init(params)
        >>> sorted(state.inner_states)
        ['other', 'spectral']
    """
    graft_betas, graft_eps = _deprecated(betas, eps, graft_betas, graft_eps)
    optim.check_options(
        {
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "max_update_rms": max_update_rms,
            "momentum": momentum,
        }
    )
    _dtype("mu_dtype", mu_dtype, allow_none=True)
    parts = [
        scale_by_spectral_kron(
            precond_lr,
            p=p,
            gamma=gamma,
            damping=damping,
            update_interval=update_interval,
            precond_warmup=precond_warmup,
            reorth_interval=reorth_interval,
            cayley=cayley,
            cayley_terms=cayley_terms,
            exp=exp,
            tie_tol=tie_tol,
            max_step_norm=max_step_norm,
            rotation=rotation,
            step_scale=step_scale,
            max_precond_dim=max_precond_dim,
            precond_dtype=precond_dtype,
            graft=graft,
            graft_betas=graft_betas,
            graft_eps=graft_eps,
            nonfinite=nonfinite,
        )
    ]
    if max_update_rms is not None:
        parts.append(clip_by_update_rms(max_update_rms))
    parts += [
        heavy_ball(momentum, mu_dtype),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    ]
    tx = _skip_nonfinite(optax.chain(*parts))
    if others is None:
        if label_fn is not None:
            raise ValueError("`label_fn` needs `others` (the transforms for its labels)")
        return optax.with_extra_args_support(tx)
    if not isinstance(others, Mapping) or SPECTRAL in others:
        raise ValueError(
            f"`others` must be a dict of optax transforms without the key {SPECTRAL!r}"
        )
    return optax.with_extra_args_support(
        optax.partition({SPECTRAL: tx, **others}, label_fn or order_labels)
    )
