"""``torch.optim`` adapter: :class:`SpectralKron` and the functional :func:`spectral_kron`.

The math is the core's (``spectral_curv.kron`` / ``spectral_curv.diag``, SPEC §3–§5);
this module owns only mutation, parameter routing and the optimizer conventions:

- order-2 weights: Kronecker spectral preconditioner ``α S_C ⊗ S_K`` (SPEC §4);
- order ≥ 3 (conv): flattened to ``(shape[0], prod(shape[1:]))``; size-1 dimensions are
  dropped first (``optim.plan``: a ``(1, 16, 64)`` position embedding is 16×64);
- order ≤ 1 (biases, norms, scalars): the diagonal scheme (SPEC §3);
- a side longer than ``max_precond_dim`` (embeddings, vocabulary heads) is kept diagonal
  (``B = I`` on that side: the factor is ``Diag(d)``, O(n) memory), the other side stays
  a full spectral factor; both sides long gives an Adafactor-like ``α d_C d_Kᵀ``.

Same-shaped layers are refreshed together: their factors are stacked and go through one
batched matmul chain. Example::

    >>> import torch
    >>> from spectral_curv.torch import SpectralKron
    >>> model = torch.nn.Linear(4, 3)
    >>> opt = SpectralKron(model.parameters(), lr=1e-2)
    >>> model(torch.randn(8, 4)).square().mean().backward()
    >>> opt.step()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import diag, kron, optim

# The torch fast paths are registered up front (no lazy import inside a compiled step).
from .backends import torch as _torch_fast_paths  # noqa: F401

__all__ = ["SpectralKron", "init_state", "spectral_kron"]

_NONFINITE = ("raise", "skip")


def _state_plan(state: dict[str, Any]) -> tuple[Any, ...]:
    """The plan a state was created with (read from its keys, not from the group's options,
    so that changing ``max_precond_dim`` later cannot mix incompatible states)."""
    if "d" in state:
        return ("diag",)
    r, c = state["d_C"].shape[-1], state["d_K"].shape[-1]
    return ("kron", r, c, "B_C" not in state, "B_K" not in state)


def _init_state(p: Tensor, plan: tuple[Any, ...], dtype: torch.dtype, graft: str | None) -> dict:
    """Fresh per-parameter state (factors are set from the first gradient).

    ``step`` and ``refreshes`` are int64 counters on the CPU (read with ``.item()`` on the
    host every step: no device sync; int64, so they do not saturate like a float32 count)."""
    kw = {"dtype": dtype, "device": p.device}
    state: dict[str, Any] = {
        "step": torch.tensor(0, dtype=torch.int64),
        "refreshes": torch.tensor(0, dtype=torch.int64),
        "rejected": torch.tensor(0, dtype=torch.int64, device=p.device),
        "momentum_buffer": torch.zeros(p.shape, **kw),
    }
    if plan[0] == "diag":
        state["d"] = torch.ones(p.shape, **kw)
    else:
        _, r, c, diag_r, diag_c = plan
        state["alpha"] = torch.ones((), **kw)
        state["d_C"] = torch.ones(r, **kw)
        state["d_K"] = torch.ones(c, **kw)
        if not diag_r:
            state["B_C"] = torch.eye(r, **kw)
        if not diag_c:
            state["B_K"] = torch.eye(c, **kw)
    if graft == "adam":
        state["exp_avg"] = torch.zeros(p.shape, **kw)
        state["exp_avg_sq"] = torch.zeros(p.shape, **kw)
    return state


def init_state(
    param: Tensor,
    *,
    max_precond_dim: int = optim.DEFAULT_MAX_PRECOND_DIM,
    precond_dtype: torch.dtype = torch.float32,
    graft: str | None = None,
) -> dict[str, Any]:
    """A fresh state dict for ``param``, as :class:`SpectralKron` creates it (for callers of
    the functional :func:`spectral_kron`).

    Example::

        >>> import torch
        >>> from spectral_curv.torch import init_state
        >>> st = init_state(torch.zeros(3, 4))
        >>> sorted(st)
        ['B_C', 'B_K', 'alpha', 'd_C', 'd_K', 'momentum_buffer', 'refreshes', 'rejected', 'step']
        >>> tuple(st["B_K"].shape), sorted(init_state(torch.zeros(5)))[0]
        ((4, 4), ...)
    """
    return _init_state(param, optim.plan(tuple(param.shape), max_precond_dim), precond_dtype, graft)


def _kron_bucket(
    grads: list[Tensor],
    states: list[dict[str, Any]],
    plan: tuple[Any, ...],
    *,
    first: bool,
    refresh: bool,
    reorth: bool,
    opts: dict[str, Any],
) -> list[Tensor]:
    """Refresh (when due) and precondition a stack of same-shaped layers; returns directions."""
    _, r, c, _, _ = plan
    dt = opts["precond_dtype"]
    if len(grads) == 1:
        G = grads[0].reshape(1, r, c).to(dt)
    else:
        G = torch.stack([g.reshape(r, c) for g in grads]).to(dt)

    def stack(key: str) -> Tensor | None:
        if key not in states[0]:
            return None
        if len(states) == 1:  # a view, no copy
            return states[0][key].unsqueeze(0)
        return torch.stack([s[key] for s in states])

    st = kron.KronState(stack("alpha"), stack("B_C"), stack("d_C"), stack("B_K"), stack("d_K"))
    if first:
        st = optim.first_state(st, G, damping=opts["damping"])
    if refresh:
        st, ok = optim.refresh(st, G, **_refresh_opts(opts))
        for i, s in enumerate(states):
            s["rejected"].add_((~ok[i]).to(torch.int64))
            s["refreshes"].add_(1)
        if reorth:
            st = optim.reorthonormalize(st)
    if first or refresh:  # otherwise the factors are unchanged: nothing to write back
        for key, val in zip(kron.KronState._fields, st):
            if val is not None:
                for i, s in enumerate(states):
                    s[key] = val[i].clone()
    u = optim.direction(st, G, p=opts["p"])
    return [u[i].reshape(g.shape) for i, g in enumerate(grads)]


def _diag_one(
    g: Tensor, state: dict[str, Any], *, first: bool, refresh: bool, opts: dict[str, Any]
) -> Tensor:
    dt = opts["precond_dtype"]
    g = g.to(dt)
    st: Any = diag.DiagState(state["d"])
    if first:
        st = optim.first_state(st, g, damping=opts["damping"])
    if refresh:
        st, ok = optim.refresh(st, g, **_refresh_opts(opts))
        state["rejected"].add_((~ok).to(torch.int64))
        state["refreshes"].add_(1)
    state["d"] = st.d
    return optim.direction(st, g, p=opts["p"])


def _diag_bucket(
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    first: bool,
    refresh: bool,
    opts: dict[str, Any],
) -> list[Tensor]:
    """The diagonal scheme for several parameters at once: it is elementwise, so their
    flattened gradients and ``d`` are concatenated and go through one chain of kernels.

    The first step (whose fallback value is a per-parameter mean) runs per parameter.
    Keep-last-good applies to the block: a refresh with a non-finite or non-positive ``d``
    anywhere in it is discarded for all of its parameters and counted in each one's
    ``rejected`` (no host sync)."""
    if len(grads) == 1 or first:
        return [
            _diag_one(g, s, first=first, refresh=refresh, opts=opts) for g, s in zip(grads, states)
        ]
    dt = opts["precond_dtype"]
    g = torch.cat([x.reshape(-1).to(dt) for x in grads])
    st: Any = diag.DiagState(torch.cat([s["d"].reshape(-1) for s in states]))
    if refresh:
        st, ok = optim.refresh(st, g, **_refresh_opts(opts))
        torch._foreach_copy_([s["d"] for s in states], list(_split(st.d, states, "d")))
        rejected = (~ok).to(torch.int64)
        for s in states:
            s["rejected"].add_(rejected)
            s["refreshes"].add_(1)
    u = optim.direction(st, g, p=opts["p"])
    return list(_split(u, states, "d"))


def _split(flat: Tensor, states: list[dict[str, Any]], key: str) -> Any:
    """Views of ``flat`` shaped like each ``state[key]``."""
    pieces = torch.split(flat, [s[key].numel() for s in states])
    return (x.view(s[key].shape) for x, s in zip(pieces, states))


def _postprocess(
    param: Tensor, grad: Tensor, u: Tensor, state: dict[str, Any], step: int, opts: dict[str, Any]
) -> None:
    """Grafting / clipping, momentum, decoupled weight decay and the parameter update."""
    dt = opts["precond_dtype"]
    if opts["graft"] == "adam":
        u, exp_avg, exp_avg_sq = optim.graft_adam(
            u,
            grad.to(dt),
            state["exp_avg"],
            state["exp_avg_sq"],
            step=step,
            betas=opts["betas"],
            eps=opts["eps"],
        )
        state["exp_avg"].copy_(exp_avg)
        state["exp_avg_sq"].copy_(exp_avg_sq)
    if opts["max_update_rms"] is not None:
        u = optim.clip_rms(u, opts["max_update_rms"])
    if opts["momentum"]:
        u = state["momentum_buffer"].copy_(
            optim.add_momentum(state["momentum_buffer"], u, opts["momentum"])
        )
    param.copy_(optim.apply_update(param, u, lr=opts["lr"], weight_decay=opts["weight_decay"]))


def _fusable(param: Tensor, opts: dict[str, Any]) -> bool:
    """Whether :func:`_postprocess_foreach` computes this parameter's update (no grafting or
    clipping, which need per-parameter norms; a float lr; the parameter in the factors' dtype)."""
    return (
        opts["graft"] is None
        and opts["max_update_rms"] is None
        and not isinstance(opts["lr"], Tensor)
        and param.dtype == opts["precond_dtype"]
    )


def _postprocess_foreach(
    params: list[Tensor], us: list[Tensor], states: list[dict[str, Any]], opts: dict[str, Any]
) -> None:
    """:func:`optim.add_momentum` and :func:`optim.apply_update` for a list of parameters as
    ``torch._foreach_*`` kernels: the same operations in the same order (so the same numbers)
    in a handful of launches instead of several per parameter."""
    lr, wd, mom = opts["lr"], opts["weight_decay"], opts["momentum"]
    if mom:
        bufs = [s["momentum_buffer"] for s in states]
        torch._foreach_mul_(bufs, mom)
        torch._foreach_add_(bufs, us)
        us = bufs
    if wd:
        torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_sub_(params, torch._foreach_mul(us, lr))


def _refresh_opts(opts: dict[str, Any]) -> dict[str, Any]:
    return {
        "precond_lr": opts["precond_lr"],
        "gamma": opts["gamma"],
        "damping": opts["damping"],
        "cayley": opts["cayley"],
        "exp": opts["exp"],
        "cayley_terms": opts["cayley_terms"],
        "tie_tol": opts["tie_tol"],
        "max_step_norm": opts["max_step_norm"],
        "rotation": opts["rotation"],
    }


def spectral_kron(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float | Tensor,
    precond_lr: float,
    p: float,
    gamma: float,
    damping: float,
    momentum: float,
    weight_decay: float,
    update_interval: int,
    precond_warmup: int,
    reorth_interval: int,
    cayley: str,
    cayley_terms: int,
    exp: str,
    tie_tol: float | None,
    max_step_norm: float | None,
    max_update_rms: float | None,
    graft: str | None,
    betas: tuple[float, float],
    eps: float,
    max_precond_dim: int,
    precond_dtype: torch.dtype,
    rotation: str = "damped",
) -> None:
    """Functional form of :class:`SpectralKron` (one step; states are mutated in place).

    ``states[i]`` must have been created for ``params[i]`` (see ``SpectralKron``). Grads are
    assumed finite and dense (the class checks them once, before any state changes).

    Example (one functional step equals one :class:`SpectralKron` step)::

        >>> import torch
        >>> from spectral_curv.torch import SpectralKron, init_state, spectral_kron
        >>> w1, w2 = (torch.nn.Parameter(torch.ones(3, 2)) for _ in range(2))
        >>> g = torch.arange(6.0).reshape(3, 2)
        >>> opt = SpectralKron([w1], lr=0.1)
        >>> w1.grad = g
        >>> opt.step()
        >>> with torch.no_grad():
        ...     spectral_kron([w2], [g], [init_state(w2)], **opt.defaults)
        >>> torch.equal(w1, w2), bool((w2 < 1).any())
        (True, True)
    """
    opts = dict(
        lr=lr,
        precond_lr=precond_lr,
        p=p,
        gamma=gamma,
        damping=damping,
        momentum=momentum,
        weight_decay=weight_decay,
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
        precond_dtype=precond_dtype,
    )
    buckets: dict[tuple[Any, ...], list[int]] = {}
    steps = []
    for i, (param, st) in enumerate(zip(params, states)):
        step = int(st["step"].item())  # CPU tensor: no device sync
        steps.append(step)
        first, refresh, reorth = optim.schedule(
            step,
            int(st["refreshes"].item()),  # CPU tensor
            update_interval=update_interval,
            precond_warmup=precond_warmup,
            reorth_interval=reorth_interval,
            cayley=cayley,
        )
        key = (_state_plan(st), param.device, first, refresh, reorth)
        buckets.setdefault(key, []).append(i)
    directions: dict[int, Tensor] = {}
    for (plan, _, first, refresh, reorth), idx in buckets.items():
        if plan[0] == "diag":
            us = _diag_bucket(
                [grads[i] for i in idx],
                [states[i] for i in idx],
                first=first,
                refresh=refresh,
                opts=opts,
            )
            directions.update(zip(idx, us))
        else:
            us = _kron_bucket(
                [grads[i] for i in idx],
                [states[i] for i in idx],
                plan,
                first=first,
                refresh=refresh,
                reorth=reorth,
                opts=opts,
            )
            directions.update(zip(idx, us))
    fused: list[int] = []
    for i, (param, grad, st) in enumerate(zip(params, grads, states)):
        st["step"].add_(1)
        if _fusable(param, opts):
            fused.append(i)
        else:
            _postprocess(param, grad, directions[i], st, steps[i] + 1, opts)
    if fused:
        _postprocess_foreach(
            [params[i] for i in fused],
            [directions[i] for i in fused],
            [states[i] for i in fused],
            opts,
        )


class SpectralKron(Optimizer):
    """Kronecker spectral-factorized preconditioner (Lin et al., ICML 2025) as a torch optimizer.

    Update of a matrix weight ``M`` with gradient ``G`` (SPEC §4–§5)::

        every `update_interval` steps:  (α, S_C, S_K) ← spectral refresh with the GOP of G
        U = α^{-1/p} S_C^{-1/p} G S_K^{-1/p}            (rotated form: no eigh, no inverse)
        U ← graft/clip(U);  m ← momentum·m + U;  M ← (1 − lr·wd) M − lr·m

    Schedule, per parameter, with ``t`` its 0-based step count: the first step sets
    ``S₀ = α₀ I``, ``α₀ = mean(G²) + λ`` (diagonal scheme: ``d₀ = g² + λ``; a zero or
    overflowing value falls back to a positive one, so a zero first gradient with ``λ = 0``
    cannot give 0·∞ = NaN); a refresh happens when ``t == 0 or t < precond_warmup or
    t % update_interval == 0``, and the direction ``U`` uses the factors after it. The
    momentum buffer is not dampened (SGD-style), so with ``momentum=0.9`` the steady-state
    step is ~10× ``lr``: compare learning rates with Adam's accordingly.

    Args:
        params: parameters or param groups.
        lr: step size ``β₁`` (float or 0-d tensor, so schedules can change it).
        precond_lr: preconditioner step ``β₂``.
        p: matrix root (any real ``p > 0``; 2 is Shampoo/Adam-like, 1 root-free).
        gamma: 1 for a moving average (RMSprop-like), 0 for a sum (AdaGrad-like).
        damping: ``λ``; enters each factor as ``λ Tr(S_other⁻¹)``.
        momentum: heavy-ball momentum on the preconditioned direction.
        weight_decay: decoupled (AdamW-style) weight decay.
        update_interval: refresh the preconditioner every ``T`` steps.
        precond_warmup: refresh at every step during the first ``precond_warmup`` steps.
        reorth_interval: every this many refreshes pull ``B`` back to orthogonal with one
            Newton–Schulz step (``maps.orthonormalize``; every Cayley mode; 0: off).
        cayley, cayley_terms, exp, tie_tol, max_step_norm: the core's modes
            (``spectral_curv.kron.update_gop``); defaults: matmul-only truncated maps
            (``cayley="quadratic"``: ``I + 2X + 2X²``, 2 matmuls per factor, orthogonal to
            O(X⁴) like Neumann with one term at 3).
        rotation: the basis-update rule: ``"damped"`` (default) bounds each eigenvector
            pair's rotation where two eigenvalues nearly tie; ``"paper"`` is the paper's
            ``U_ij = −W_ij/(d_i − d_j)`` (``spectral_curv.maps.rotation_generator``).
        max_update_rms: clip the preconditioned update's RMS per parameter (None: off).
        graft: ``"adam"`` rescales each update to the norm of Adam's update (None: off).
        betas, eps: Adam's constants for grafting.
        max_precond_dim: sides longer than this are kept diagonal.
        precond_dtype: dtype of the factors, momentum and graft moments (float32 default;
            bfloat16 supported).
        nonfinite: ``"raise"`` (default) raises before any state changes when a gradient
            has NaN/inf; ``"skip"`` skips the whole step (counted in ``skipped_steps``).

    A refresh that yields non-finite or non-positive factors is discarded and the last
    good preconditioner kept; ``state[p]["rejected"]`` counts them. This holds per matrix
    layer; the diagonal-scheme parameters of a group (biases, norms), which are refreshed as
    one concatenated vector, share the decision.

    Example (a linear least-squares fit)::

        >>> import torch
        >>> from spectral_curv.torch import SpectralKron
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(4, 3)
        >>> X = torch.randn(32, 4)
        >>> Y = X @ torch.randn(4, 3)
        >>> opt = SpectralKron(model.parameters(), lr=0.05, momentum=0.0)
        >>> loss = lambda: (model(X) - Y).square().mean()
        >>> l0 = loss().item()
        >>> for _ in range(30):
        ...     opt.zero_grad()
        ...     loss().backward()
        ...     opt.step()
        >>> st = opt.state[model.weight]
        >>> int(st["step"]), tuple(st["B_C"].shape), st["B_C"].dtype, bool(loss().item() < 0.1 * l0)
        (30, (3, 3), torch.float32, True)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
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
        max_precond_dim: int = 4096,
        precond_dtype: torch.dtype = torch.float32,
        nonfinite: str = "raise",
    ) -> None:
        if nonfinite not in _NONFINITE:
            raise ValueError(f"`nonfinite` must be one of {_NONFINITE}, got {nonfinite!r}")
        defaults = dict(
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
        _check_options(defaults)
        defaults["betas"] = tuple(betas)
        self.nonfinite = nonfinite
        self.skipped_steps = 0
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """``torch.optim`` semantics; the group's own hyperparameters are validated too."""
        _check_options({**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}})
        if "betas" in param_group:
            param_group = {**param_group, "betas": tuple(param_group["betas"])}
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimisation step (``closure`` re-evaluates the loss, as in ``torch.optim``).

        Every gradient is validated (dense, real, finite) before any state is created or
        changed: a bad gradient leaves the optimizer and the parameters exactly as they were.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work: list[tuple[dict[str, Any], list[Tensor]]] = []
        flags: dict[torch.device, list[Tensor]] = {}  # non-empty grads per device
        for group in self.param_groups:
            params = [prm for prm in group["params"] if prm.grad is not None]
            for prm in params:
                g = prm.grad
                if g.is_sparse:
                    raise RuntimeError("SpectralKron does not support sparse gradients")
                if torch.is_complex(prm) or torch.is_complex(g):
                    raise RuntimeError(
                        "SpectralKron does not support complex parameters or gradients"
                    )
                if g.numel():
                    flags.setdefault(g.device, []).append(g)
            work.append((group, params))
        # One host sync per device (the raise/skip decision needs the value).
        if not all(_all_finite(gs) for gs in flags.values()):
            if self.nonfinite == "raise":
                raise ValueError(
                    "SpectralKron: a gradient contains NaN or inf; no state was changed "
                    "(pass nonfinite='skip' to skip such steps instead)"
                )
            self.skipped_steps += 1
            return loss
        for group, params in work:
            params = [prm for prm in params if self._owns(prm)]
            if not params:
                continue
            states = []
            for prm in params:
                state = self.state[prm]
                if not state:
                    plan = optim.plan(tuple(prm.shape), group["max_precond_dim"])
                    state.update(_init_state(prm, plan, group["precond_dtype"], group["graft"]))
                states.append(state)
            spectral_kron(
                params,
                [prm.grad for prm in params],
                states,
                **{k: group[k] for k in _GROUP_KEYS},
            )
        return loss

    def _owns(self, param: Tensor) -> bool:
        """Whether this optimizer updates ``param`` (all of them here; a distributed subclass
        updates only the parameters its rank owns, after every gradient was validated)."""
        return True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state without torch's default cast of floating state to the parameter dtype.

        ``torch.optim.Optimizer.load_state_dict`` casts every state tensor but ``step`` to
        its parameter's dtype, which would silently downcast float32 factors of a bf16 model
        (and the int64 counters); here tensors keep their saved dtype, the counters ``step``
        and ``refreshes`` stay on the CPU, everything else moves to the parameter's device.
        """
        import copy

        saved_state = state_dict["state"]
        super().load_state_dict({**state_dict, "state": {}})
        for group in self.param_groups:  # a group saved before an option existed: its default
            for k in _GROUP_KEYS:
                group.setdefault(k, self.defaults[k])
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [prm for g in self.param_groups for prm in g["params"]]
        id_to_param = dict(zip(saved_ids, params))
        for pid, st in saved_state.items():
            prm = id_to_param[pid]
            new: dict[str, Any] = {}
            for k, v in st.items():
                if isinstance(v, Tensor):
                    dev = torch.device("cpu") if k in _HOST_KEYS else prm.device
                    new[k] = v.detach().to(dev, copy=True)
                else:
                    new[k] = copy.deepcopy(v)
            self.state[prm] = new


#: Per-group hyperparameters passed to :func:`spectral_kron`.
_GROUP_KEYS = (
    "lr",
    "precond_lr",
    "p",
    "gamma",
    "damping",
    "momentum",
    "weight_decay",
    "update_interval",
    "precond_warmup",
    "reorth_interval",
    "cayley",
    "cayley_terms",
    "exp",
    "tie_tol",
    "max_step_norm",
    "rotation",
    "max_update_rms",
    "graft",
    "betas",
    "eps",
    "max_precond_dim",
    "precond_dtype",
)

#: State counters that live on the host (read with ``.item()`` every step).
_HOST_KEYS = ("step", "refreshes")


def _all_finite(grads: list[Tensor]) -> bool:
    """Whether every gradient (same device) is finite: one fused max-abs per tensor
    (``_foreach_norm`` with ord ∞, NaN propagates) and one host sync for the list."""
    norms = torch._foreach_norm(grads, float("inf"))
    return bool(torch.isfinite(torch.stack(norms)).all())


def _check_options(o: dict[str, Any]) -> None:
    """Raise a ValueError naming the first invalid hyperparameter of a param group."""
    optim.check_options(o)
    dt = o["precond_dtype"]
    if not (isinstance(dt, torch.dtype) and dt.is_floating_point):
        raise ValueError(f"`precond_dtype` must be a floating torch.dtype, got {dt!r}")
