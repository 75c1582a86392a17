"""Optax adapter: :func:`scale_by_spectral_kron` and the full optimizer :func:`spectral_kron`.

The math is the core's (SPEC §3 diagonal scheme, §4 Kronecker scheme, §5 damping, ties and
the normalised factor step), reached through :mod:`spectral_curv.optim`; this module owns
only the optax state pytree, parameter routing and jit-safe control flow (``lax.cond`` for
the first step, the refresh and the re-orthonormalisation). The semantics are those of
:class:`spectral_curv.torch.SpectralKron` (same defaults, same step order), so both give
the same trajectory to round-off:

- leaves of order ≥ 2: Kronecker factors on ``(shape[0], prod(shape[1:]))`` (SPEC §4), a
  side longer than ``max_precond_dim`` kept diagonal;
- leaves of order ≤ 1 (biases, scalars): the diagonal scheme (SPEC §3).

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

#: The default ``precond_dtype``: a dtype instance, not the callable ``jnp.float32`` (which
#: ``inject_hyperparams`` would take for a schedule).
_F32 = jnp.dtype(jnp.float32)


class ScaleBySpectralKronState(NamedTuple):
    """State of :func:`scale_by_spectral_kron` (a pytree).

    ``count``: steps taken (the 0-based step ``t`` of the next update); ``refreshes``:
    preconditioner refreshes so far; ``rejected``: per leaf, refreshes discarded by
    keep-last-good; ``precond``: per leaf a ``kron.KronState`` or ``diag.DiagState`` in
    ``precond_dtype``; ``exp_avg``/``exp_avg_sq``: Adam's moments for grafting (``None``
    without grafting).

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
    _dtype("precond_dtype", o["precond_dtype"])


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
    precond_lr: Any = 0.1,
    *,
    p: Any = 2.0,
    gamma: Any = 1.0,
    damping: Any = 1e-8,
    update_interval: Any = 2,
    precond_warmup: Any = 10,
    reorth_interval: Any = 10,
    cayley: str = "quadratic",
    cayley_terms: Any = 1,
    exp: str = "first_order",
    tie_tol: Any = None,
    max_step_norm: Any = None,
    rotation: str = "damped",
    max_precond_dim: Any = optim.DEFAULT_MAX_PRECOND_DIM,
    precond_dtype: Any = _F32,
    graft: str | None = None,
    betas: tuple[Any, Any] = (0.9, 0.999),
    eps: Any = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    """Precondition each gradient leaf with its spectral factors (SPEC §3–§5), nothing else.

    Per step ``t`` (``state.count``), for every leaf ``G``: ``optim.schedule`` →
    ``first_state`` on the first step → ``refresh`` (keep-last-good; rejected refreshes are
    counted) and ``reorthonormalize`` when due → ``U = S^{-1/p} G`` with the refreshed
    factors → optional Adam grafting (``graft="adam"``, which needs the raw gradient:
    ``U`` is rescaled to the norm of Adam's update at the 1-based step ``t + 1``). The
    output ``U`` has each gradient leaf's dtype; the factors live in ``precond_dtype``.

    Chain it with the rest of an optimizer, e.g. ``optax.chain(scale_by_spectral_kron(),
    optax.add_decayed_weights(wd), optax.scale_by_learning_rate(lr))`` (no momentum), or
    use :func:`spectral_kron`. The options are those of
    :class:`spectral_curv.torch.SpectralKron`; float options may be 0-d (traced) arrays,
    ``cayley``, ``exp``, ``rotation``, ``graft``, ``betas``,
    ``tie_tol=None``/``max_step_norm=None`` and ``precond_dtype`` must be Python values,
    ``max_precond_dim`` must be concrete at
    ``init`` (it fixes the state's structure) and ``cayley_terms`` concrete with
    ``cayley="neumann"``.

    Differentiating through ``update`` (e.g. ``jax.grad`` of a loss after a step, w.r.t. the
    parameters) treats the preconditioner as a constant: the gradient fed to
    ``first_state``/``refresh`` is wrapped in ``lax.stop_gradient``, so ``∂U/∂G = S^{-1/p}``
    (plus the grafting terms). The refresh itself is not differentiated: its tie masks,
    ``sqrt`` of a zero Cayley norm and keep-last-good selection give NaN or meaningless
    derivatives. Values are unchanged.

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
        max_precond_dim=max_precond_dim,
        precond_dtype=precond_dtype,
        graft=graft,
        betas=betas,
        eps=eps,
    )
    _check_precond_options(opts)
    pdt = _dtype("precond_dtype", precond_dtype)
    betas = (betas[0], betas[1])

    def init_fn(params: Any) -> ScaleBySpectralKronState:
        dim = _static_int(max_precond_dim)
        if dim is None:
            raise ValueError(
                "`max_precond_dim` is traced, but it fixes the state's structure: call `init` "
                "outside jax.jit, or pass static_args=('max_precond_dim',) to "
                "optax.inject_hyperparams"
            )

        def one(x: Any) -> optim.Precond:
            pl = optim.plan(tuple(x.shape), dim)
            return optim.init(pl, optim.matrix_shape(pl, tuple(x.shape)), dtype=pdt, xp=jnp)

        moments = None
        if graft == "adam":
            moments = jax.tree.map(lambda x: jnp.zeros(x.shape, dtype=pdt), params)
        return ScaleBySpectralKronState(
            count=jnp.zeros([], jnp.int32),
            refreshes=jnp.zeros([], jnp.int32),
            rejected=jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params),
            precond=jax.tree.map(one, params),
            exp_avg=moments,
            exp_avg_sq=moments,
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
        ropts = dict(
            precond_lr=_hp(precond_lr, pdt),
            gamma=_hp(gamma, pdt),
            damping=_hp(damping, pdt),
            cayley=cayley,
            exp=exp,
            cayley_terms=terms,
            tie_tol=_hp(tie_tol, pdt),
            max_step_norm=_hp(max_step_norm, pdt),
            rotation=rotation,
        )
        first, refresh, reorth = _schedule(
            state.count,
            state.refreshes,
            update_interval=update_interval,
            precond_warmup=precond_warmup,
            reorth_interval=reorth_interval,
            cayley=cayley,
        )
        leaves, treedef = jax.tree.flatten(updates)
        precs = treedef.flatten_up_to(state.precond)
        rejs = treedef.flatten_up_to(state.rejected)
        if graft == "adam":
            eas = treedef.flatten_up_to(state.exp_avg)
            eass = treedef.flatten_up_to(state.exp_avg_sq)
        else:
            eas = eass = [None] * len(leaves)
        acc = jnp.promote_types(pdt, jnp.float32)
        step1 = (state.count + 1).astype(acc)  # Adam's 1-based step
        Gs = []
        for g, st in zip(leaves, precs):
            if isinstance(st, kron.KronState):
                G = jnp.reshape(g, (st.d_C.shape[-1], st.d_K.shape[-1]))
            else:
                G = g
            # The factors are constants under differentiation (see the docstring).
            Gs.append(jax.lax.stop_gradient(jnp.asarray(G, dtype=pdt)))

        # One `lax.cond` per schedule flag for all leaves (the flags are shared): a small
        # program, so compilation stays fast for models with many leaves.
        def first_all(ss: list) -> list:
            return [
                _cast_like(optim.first_state(s, G, damping=ropts["damping"]), s)
                for s, G in zip(ss, Gs)
            ]

        def refresh_all(ss: list) -> tuple[list, list]:
            new = [optim.refresh(s, G, **ropts) for s, G in zip(ss, Gs)]
            return (
                [_cast_like(n, s) for (n, _), s in zip(new, ss)],
                [jnp.asarray(ok, dtype=bool) for _, ok in new],
            )

        def keep(ss: list) -> tuple[list, list]:
            return ss, [jnp.asarray(True) for _ in ss]

        def reorth_all(ss: list) -> list:
            return [_cast_like(optim.reorthonormalize(s), s) for s in ss]

        precs = jax.lax.cond(first, first_all, lambda ss: ss, precs)
        precs, oks = jax.lax.cond(refresh, refresh_all, keep, precs)
        new_rejs = [r + (~ok).astype(jnp.int32) for r, ok in zip(rejs, oks)]
        precs = jax.lax.cond(reorth, reorth_all, lambda ss: ss, precs)
        out, new_eas, new_eass = [], [], []
        for g, st, G, ea, eas_ in zip(leaves, precs, Gs, eas, eass):
            # direction with the (non-stopped) gradient: ∂U/∂G = S^{-1/p}
            Gd = jnp.reshape(jnp.asarray(g, dtype=pdt), G.shape)
            u = jnp.reshape(optim.direction(st, Gd, p=_hp(p, pdt)), g.shape)
            if graft == "adam":
                u, ea_new, eas_new = optim.graft_adam(
                    u,
                    jnp.asarray(g, dtype=pdt),
                    ea,
                    eas_,
                    step=step1,
                    betas=betas,
                    eps=_hp(eps, pdt),
                )
                ea, eas_ = ea_new.astype(ea.dtype), eas_new.astype(eas_.dtype)
            out.append(u.astype(g.dtype))
            new_eas.append(ea)
            new_eass.append(eas_)
        new_state = ScaleBySpectralKronState(
            count=optax.safe_int32_increment(state.count),
            refreshes=jnp.where(
                refresh, optax.safe_int32_increment(state.refreshes), state.refreshes
            ),
            rejected=treedef.unflatten(new_rejs),
            precond=treedef.unflatten(precs),
            exp_avg=treedef.unflatten(new_eas) if graft == "adam" else None,
            exp_avg_sq=treedef.unflatten(new_eass) if graft == "adam" else None,
        )
        return treedef.unflatten(out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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
    precond_lr: Any = 0.1,
    *,
    p: Any = 2.0,
    gamma: Any = 1.0,
    damping: Any = 1e-8,
    momentum: Any = 0.9,
    weight_decay: Any = 0.0,
    update_interval: Any = 2,
    precond_warmup: Any = 10,
    reorth_interval: Any = 10,
    cayley: str = "quadratic",
    cayley_terms: Any = 1,
    exp: str = "first_order",
    tie_tol: Any = None,
    max_step_norm: Any = None,
    rotation: str = "damped",
    max_update_rms: Any = None,
    graft: str | None = None,
    betas: tuple[Any, Any] = (0.9, 0.999),
    eps: Any = 1e-8,
    max_precond_dim: Any = optim.DEFAULT_MAX_PRECOND_DIM,
    precond_dtype: Any = _F32,
    mu_dtype: Any = None,
    others: Mapping[str, optax.GradientTransformation] | None = None,
    label_fn: Callable[[Any], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The spectral Kronecker optimizer (Lin et al., ICML 2025), as torch's ``SpectralKron``.

    ``chain(scale_by_spectral_kron(...), clip_by_update_rms(max_update_rms) if set,
    heavy_ball(momentum, mu_dtype), add_decayed_weights(weight_decay),
    scale_by_learning_rate(learning_rate))``, i.e. per leaf
    ``U = S^{-1/p} G`` (grafted, clipped), ``m ← μm + U``, ``M ← M − lr (m + wd M)``.
    ``learning_rate`` may be a schedule. Leaves of order ≥ 2 get the Kronecker factors,
    order ≤ 1 the diagonal scheme (the routing of the torch optimizer).

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
            max_precond_dim=max_precond_dim,
            precond_dtype=precond_dtype,
            graft=graft,
            betas=betas,
            eps=eps,
        )
    ]
    if max_update_rms is not None:
        parts.append(clip_by_update_rms(max_update_rms))
    parts += [
        heavy_ball(momentum, mu_dtype),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    ]
    tx = optax.chain(*parts)
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
