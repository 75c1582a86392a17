""":func:`scale_by_spectral_kron`: the spectral preconditioner as an optax transform.

The step is the engine's (``optim.precondition_step``, math §3–§5) with ``lax.cond`` for its
flags; this module owns the state pytree, the per-leaf casts and reshapes, the non-finite
policy under ``jit`` (host callbacks only inside a ``lax.cond`` on their flag) and Adam
grafting of each leaf (``optim.shape_direction``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import diag, kron, optim
from ._options import DEFAULTS as _D
from ._options import (
    PRECOND_OPTIONS,
    cast_hyperparam,
    floating_dtype,
    graft_constants,
    static_if_known,
    static_int,
)
from ._transforms import differentiable_direction

# Float options cast to the factors' dtype when given as arrays (``inject_hyperparams``).
_CAST = ("precond_lr", "gamma", "damping", "tie_tol", "max_step_norm", "p", "graft_eps")


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


def _on_host(fn: Callable[[Any], None], flag: Any) -> None:
    """``fn(flag)`` now (eager), or under ``jit`` (a traced ``flag``, even of an empty tree of
    gradients) from a host callback inside a ``lax.cond`` on ``flag``: the device sends
    nothing to the host unless ``flag`` is set."""
    if not isinstance(flag, jax.core.Tracer):
        fn(flag)
    else:  # the flag itself goes to the host: under `vmap` the cond is a select, both run
        jax.lax.cond(
            flag, lambda: jax.debug.callback(lambda f: fn(bool(np.any(f))), flag), lambda: None
        )


def _raise_if(bad: Any) -> None:
    if bool(bad):
        raise ValueError(
            "spectral_kron: a gradient contains NaN or inf; the state was kept and the update "
            "zeroed (pass nonfinite='skip' to skip such steps without an error)"
        )


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
    eigenvalues: str = _D.eigenvalues,
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
    (traced) arrays; ``cayley``, ``exp``, ``rotation``, ``eigenvalues``, ``graft``, ``graft_betas``,
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
    graft_betas, graft_eps = graft_constants(betas, eps, graft_betas, graft_eps)
    opts = {k: v for k, v in locals().items() if k in PRECOND_OPTIONS}
    # validated once (optim.Options); the rest of the optimizer is other transforms' part
    base = optim.Options(**opts, lr=0.0, momentum=0.0, weight_decay=0.0, max_update_rms=None)
    pdt_opt = floating_dtype("precond_dtype", precond_dtype, allow_none=True)
    norm_p = optim.step_norm_p(step_scale)
    warned = [False]

    def warn_once(rejected: Any) -> None:  # on the host (a callback under jit)
        if bool(rejected) and not warned[0]:
            warned[0] = True
            warnings.warn(optim.REJECTED_MESSAGE, optim.RejectedRefreshWarning, stacklevel=2)

    def pdt_of(x: Any) -> Any:
        return optim.precond_dtype_for(jnp, pdt_opt, x.dtype)

    def init_fn(params: Any) -> ScaleBySpectralKronState:
        dim = static_int(max_precond_dim)
        if dim is None:
            raise ValueError(
                "`max_precond_dim` is traced, but it fixes the state's structure: call `init` "
                "outside jax.jit, or pass static_args=('max_precond_dim',) to "
                "optax.inject_hyperparams"
            )
        params = jax.tree.map(jnp.asarray, params)  # a Python float leaf, as optax's own
        for x in jax.tree.leaves(params):
            if jnp.iscomplexobj(x) or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
                dt = jnp.result_type(x)
                raise TypeError(f"spectral_kron needs real floating parameters, got {dt}")

        def one(x: Any) -> optim.Precond:
            pl = optim.plan(tuple(x.shape), dim)
            shape = optim.matrix_shape(pl, tuple(x.shape))
            return optim.init(pl, shape, eigenvalues=eigenvalues, dtype=pdt_of(x), xp=jnp)

        moments = None
        if graft == "adam":
            moments = jax.tree.map(lambda x: jnp.zeros(x.shape, dtype=pdt_of(x)), params)
        return ScaleBySpectralKronState(
            count=jnp.zeros([], jnp.int32),
            refreshes=jnp.zeros([], jnp.int32),
            rejected=jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params),
            precond=jax.tree.map(one, params),
            exp_avg=moments,  # two trees, not one twice (donating the state would fail)
            exp_avg_sq=None if moments is None else jax.tree.map(jnp.zeros_like, moments),
            skipped=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: Any, state: ScaleBySpectralKronState, params: Any = None, **extra: Any
    ) -> tuple[Any, ScaleBySpectralKronState]:
        del params, extra
        terms = static_int(cayley_terms)
        if terms is None:
            if cayley == "neumann":
                raise ValueError(
                    "`cayley_terms` is traced, but cayley='neumann' needs it as a Python int: "
                    "pass static_args=('cayley_terms',) to optax.inject_hyperparams"
                )
            terms = 1  # unused by the "exact" and "quadratic" maps
        leaves, treedef = jax.tree.flatten(updates)
        leaves = [jnp.asarray(g) for g in leaves]  # a Python float leaf, as optax's own
        precs = treedef.flatten_up_to(state.precond)
        finite = optim.all_grads_finite(jnp, leaves)
        if nonfinite == "raise":
            _on_host(_raise_if, ~finite)
        pdt = jnp.result_type(*(_ref(s) for s in precs)) if precs else jnp.float32
        o = optim.Options.trusted(
            {
                **base.as_dict(),
                **{k: cast_hyperparam(getattr(base, k), pdt) for k in _CAST},
                "cayley_terms": terms,
                "reorth_interval": static_if_known(reorth_interval),
            }
        )
        flags = optim.schedule(
            state.count,
            state.refreshes,
            update_interval=o.update_interval,
            precond_warmup=o.precond_warmup,
            reorth_interval=o.reorth_interval,
            cayley=o.cayley,
        )
        Gs = []
        for g, st in zip(leaves, precs):
            G = jnp.asarray(g, dtype=_ref(st).dtype)
            if isinstance(st, kron.KronState):
                G = jnp.reshape(G, (st.d_C.shape[-1], st.d_K.shape[-1]))
            # a skipped step must not see NaN; the factors are constants under differentiation
            Gs.append(jax.lax.stop_gradient(jnp.where(finite, G, jnp.zeros_like(G))))
        new_precs, oks, dirs = optim.precondition_step(
            precs,
            Gs,
            first=flags[0],
            refresh=flags[1],
            reorth=flags[2],
            options=o,
            cond=jax.lax.cond,
        )
        moments = (
            [None] * len(leaves)
            if graft != "adam"
            else list(
                zip(treedef.flatten_up_to(state.exp_avg), treedef.flatten_up_to(state.exp_avg_sq))
            )
        )
        step1 = (state.count + 1).astype(jnp.promote_types(pdt, jnp.float32))  # Adam's 1-based step
        out, new_moments = [], []
        for g, old, st, G, u, m in zip(leaves, precs, new_precs, Gs, dirs, moments):
            # the engine's direction, differentiable as the direction of the (non-stopped)
            # gradient: ∂U/∂G = S^{-1/p}; with corrected eigenvalues in the basis before the
            # refresh (the engine's lagged order)
            st = kron.lagged(old, st) if optim.lagged(st) else st
            Gd = jnp.reshape(jnp.asarray(g, dtype=G.dtype), G.shape)
            u = jnp.reshape(differentiable_direction(u, st, Gd, o.p, norm_p), g.shape)
            if graft == "adam":
                u, sl = optim.shape_direction(
                    u, jnp.reshape(Gd, g.shape), optim.Slots(u, *m), step=step1, options=o
                )
                m = (sl.exp_avg.astype(m[0].dtype), sl.exp_avg_sq.astype(m[1].dtype))
            out.append(u.astype(g.dtype))
            new_moments.append(m)
        inc = optax.safe_int32_increment
        rejected = treedef.flatten_up_to(state.rejected)
        new_state = ScaleBySpectralKronState(
            count=inc(state.count),
            refreshes=jnp.where(flags[1], inc(state.refreshes), state.refreshes),
            rejected=treedef.unflatten(
                [r + (~jnp.all(ok)).astype(jnp.int32) for r, ok in zip(rejected, oks)]
            ),
            precond=treedef.unflatten(new_precs),
            exp_avg=treedef.unflatten([m[0] for m in new_moments]) if graft == "adam" else None,
            exp_avg_sq=treedef.unflatten([m[1] for m in new_moments]) if graft == "adam" else None,
            skipped=state.skipped,
        )
        kept = state._replace(skipped=inc(state.skipped))
        new_state = jax.tree.map(lambda n, k: jnp.where(finite, n, k), new_state, kept)
        out = [jnp.where(finite, u, jnp.zeros_like(u)) for u in out]
        rejected_now = finite & jnp.any(jnp.stack([~jnp.all(ok) for ok in oks] or [False]))
        _on_host(warn_once, rejected_now)
        return treedef.unflatten(out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _ref(st: optim.Precond) -> jax.Array:
    """The array whose dtype is the factors' (``d`` or ``alpha``)."""
    return st.d if isinstance(st, diag.DiagState) else st.alpha
