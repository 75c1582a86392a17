"""``torch.optim`` adapter: :class:`SpectralKron` and the functional :func:`spectral_kron`.

The math is the core's (``spectral_curv.kron`` / ``spectral_curv.diag``, SPEC §3–§5);
this module owns only mutation, parameter routing and the optimizer conventions:

- order-2 weights: Kronecker spectral preconditioner ``α S_C ⊗ S_K`` (SPEC §4);
- order ≥ 3 (conv): flattened to ``(shape[0], prod(shape[1:]))``;
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

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import diag, kron, maps

__all__ = ["SpectralKron", "spectral_kron"]

_NONFINITE = ("raise", "skip")
_GRAFT = (None, "adam")


def _plan(shape: torch.Size, max_precond_dim: int) -> tuple[Any, ...]:
    """How a parameter of ``shape`` is preconditioned (a hashable key)."""
    if len(shape) < 2:
        return ("diag",)
    r, c = int(shape[0]), int(math.prod(shape[1:]))
    return ("kron", r, c, r > max_precond_dim, c > max_precond_dim)


def _init_state(p: Tensor, plan: tuple[Any, ...], dtype: torch.dtype, graft: str | None) -> dict:
    """Fresh per-parameter state (factors are set from the first gradient)."""
    kw = {"dtype": dtype, "device": p.device}
    state: dict[str, Any] = {
        "step": torch.tensor(0.0, dtype=torch.float32),
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


def _finite_positive(*tensors: Tensor | None, lead: int) -> Tensor:
    """Per-layer flag (over the first ``lead`` axes): every tensor finite, d/α entries > 0."""
    ok: Tensor | None = None
    for t in tensors:
        if t is None:
            continue
        flat = t.reshape(*t.shape[:lead], -1) if lead else t.reshape(1, -1)
        good = torch.isfinite(flat).all(dim=-1)
        ok = good if ok is None else ok & good
    assert ok is not None
    return ok if lead else ok[0]


def _select(ok: Tensor, new: Tensor | None, old: Tensor | None) -> Tensor | None:
    if new is None or old is None:
        return new
    return torch.where(ok.reshape(*ok.shape, *([1] * (new.ndim - ok.ndim))), new, old)


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
    G = torch.stack([g.reshape(r, c) for g in grads]).to(dt)

    def stack(key: str) -> Tensor | None:
        return torch.stack([s[key] for s in states]) if key in states[0] else None

    st = kron.KronState(stack("alpha"), stack("B_C"), stack("d_C"), stack("B_K"), stack("d_K"))
    if first:
        # S₀ = α₀ I with α₀ = mean(G²) + λ: the first step is a scale-free gradient step.
        st = st._replace(alpha=G.square().mean(dim=(-2, -1)) + opts["damping"])
    if refresh:
        new = kron.update_gop(
            st,
            G,
            beta2=opts["precond_lr"],
            gamma=opts["gamma"],
            damping=opts["damping"],
            cayley=opts["cayley"],
            exp=opts["exp"],
            cayley_terms=opts["cayley_terms"],
            tie_tol=opts["tie_tol"],
            max_step_norm=opts["max_step_norm"],
            check=False,
        )
        ok = (
            _finite_positive(*new, lead=1)
            & (new.alpha > 0)
            & (new.d_C > 0).all(-1)
            & (new.d_K > 0).all(-1)
        )
        st = kron.KronState(*(_select(ok, n, o) for n, o in zip(new, st)))
        for i, s in enumerate(states):
            s["rejected"].add_((~ok[i]).to(torch.int64))
            s["refreshes"].add_(1)
        if reorth:
            # Undo the truncated Cayley map's drift (matmuls only; maps.orthonormalize).
            st = st._replace(
                B_C=None if st.B_C is None else maps.orthonormalize(st.B_C),
                B_K=None if st.B_K is None else maps.orthonormalize(st.B_K),
            )
    for key, val in zip(kron.KronState._fields, st):
        if val is not None:
            for i, s in enumerate(states):
                s[key] = val[i].clone()
    u = kron.precondition(st, G, p=opts["p"], check=False)
    return [u[i].reshape(g.shape) for i, g in enumerate(grads)]


def _diag_one(
    g: Tensor, state: dict[str, Any], *, first: bool, refresh: bool, opts: dict[str, Any]
) -> Tensor:
    dt = opts["precond_dtype"]
    g = g.to(dt)
    st = diag.DiagState(state["d"])
    if first:
        st = diag.DiagState(g.square() + opts["damping"])
    if refresh:
        new = diag.update_gop(
            st,
            g,
            beta2=opts["precond_lr"],
            gamma=opts["gamma"],
            damping=opts["damping"],
            exp=opts["exp"],
            check=False,
        )
        ok = torch.isfinite(new.d).all() & (new.d > 0).all()
        st = diag.DiagState(torch.where(ok, new.d, st.d))
        state["rejected"].add_((~ok).to(torch.int64))
        state["refreshes"].add_(1)
    state["d"] = st.d
    return diag.precondition(st, g, p=opts["p"], check=False)


def _postprocess(
    param: Tensor, grad: Tensor, u: Tensor, state: dict[str, Any], step: int, opts: dict[str, Any]
) -> None:
    """Grafting / clipping, momentum, decoupled weight decay and the parameter update."""
    dt = opts["precond_dtype"]
    if opts["graft"] == "adam":
        b1, b2 = opts["betas"]
        g = grad.to(dt)
        state["exp_avg"].lerp_(g, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
        adam = (state["exp_avg"] / (1 - b1**step)) / (
            (state["exp_avg_sq"] / (1 - b2**step)).sqrt() + opts["eps"]
        )
        u = u * (adam.norm() / u.norm().clamp_min(torch.finfo(u.dtype).tiny))
    if opts["max_update_rms"] is not None:
        rms = u.square().mean().sqrt()
        u = u * (opts["max_update_rms"] / rms.clamp_min(opts["max_update_rms"]))
    if opts["momentum"]:
        buf = state["momentum_buffer"]
        buf.mul_(opts["momentum"]).add_(u)
        u = buf
    lr = opts["lr"]
    if opts["weight_decay"]:
        param.mul_(1 - lr * opts["weight_decay"])
    param.sub_(lr * u.to(param.dtype))


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
) -> None:
    """Functional form of :class:`SpectralKron` (one step; states are mutated in place).

    ``states[i]`` must have been created for ``params[i]`` (see ``SpectralKron``). Grads are
    assumed finite and dense (the class checks them once, before any state changes).
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
        first = step == 0
        refresh = first or step < precond_warmup or step % update_interval == 0
        n_ref = int(st["refreshes"].item())  # CPU tensor
        reorth = (
            refresh
            and cayley == "neumann"
            and reorth_interval > 0
            and (n_ref + 1) % reorth_interval == 0
        )
        key = (_plan(param.shape, max_precond_dim), param.device, first, refresh, reorth)
        buckets.setdefault(key, []).append(i)
    directions: dict[int, Tensor] = {}
    for (plan, _, first, refresh, reorth), idx in buckets.items():
        if plan[0] == "diag":
            for i in idx:
                directions[i] = _diag_one(
                    grads[i], states[i], first=first, refresh=refresh, opts=opts
                )
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
    for i, (param, grad, st) in enumerate(zip(params, grads, states)):
        st["step"].add_(1)
        _postprocess(param, grad, directions[i], st, steps[i] + 1, opts)


class SpectralKron(Optimizer):
    """Kronecker spectral-factorized preconditioner (Lin et al., ICML 2025) as a torch optimizer.

    Update of a matrix weight ``M`` with gradient ``G`` (SPEC §4–§5)::

        every `update_interval` steps:  (α, S_C, S_K) ← spectral refresh with the GOP of G
        U = α^{-1/p} S_C^{-1/p} G S_K^{-1/p}            (rotated form: no eigh, no inverse)
        U ← graft/clip(U);  m ← momentum·m + U;  M ← (1 − lr·wd) M − lr·m

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
        reorth_interval: with ``cayley="neumann"``, every this many refreshes pull ``B``
            back to orthogonal with one Newton–Schulz step (``maps.orthonormalize``; 0: off).
        cayley, cayley_terms, exp, tie_tol, max_step_norm: the core's modes
            (``spectral_curv.kron.update_gop``); defaults: matmul-only truncated maps.
        max_update_rms: clip the preconditioned update's RMS per parameter (None: off).
        graft: ``"adam"`` rescales each update to the norm of Adam's update (None: off).
        betas, eps: Adam's constants for grafting.
        max_precond_dim: sides longer than this are kept diagonal.
        precond_dtype: dtype of the factors, momentum and graft moments (float32 default;
            bfloat16 supported).
        nonfinite: ``"raise"`` (default) raises before any state changes when a gradient
            has NaN/inf; ``"skip"`` skips the whole step (counted in ``skipped_steps``).

    A refresh that yields non-finite or non-positive factors is discarded and the last
    good preconditioner kept; ``state[p]["rejected"]`` counts them.
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
        cayley: str = "neumann",
        cayley_terms: int = 1,
        exp: str = "first_order",
        tie_tol: float | None = None,
        max_step_norm: float | None = None,
        max_update_rms: float | None = None,
        graft: str | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_precond_dim: int = 4096,
        precond_dtype: torch.dtype = torch.float32,
        nonfinite: str = "raise",
    ) -> None:
        def positive(name: str, v: Any, zero: bool = False) -> None:
            if isinstance(v, Tensor):
                if v.numel() != 1:
                    raise ValueError(f"`{name}` must be a scalar, got shape {tuple(v.shape)}")
                v = float(v)
            if (
                not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v < 0
                or (v == 0 and not zero)
            ):
                raise ValueError(
                    f"`{name}` must be finite and {'>= 0' if zero else '> 0'}, got {v!r}"
                )

        positive("lr", lr, zero=True)
        positive("precond_lr", precond_lr)
        positive("p", p)
        positive("gamma", gamma, zero=True)
        positive("damping", damping, zero=True)
        positive("weight_decay", weight_decay, zero=True)
        positive("eps", eps, zero=True)
        if not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum!r}")
        if gamma * precond_lr >= 1 and exp == "first_order":
            raise ValueError("`gamma * precond_lr` must be < 1 with exp='first_order'")
        for name, v in (("update_interval", update_interval), ("max_precond_dim", max_precond_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {v!r}")
        for name, v in (("precond_warmup", precond_warmup), ("reorth_interval", reorth_interval)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {v!r}")
        if cayley not in ("exact", "neumann"):
            raise ValueError(f"`cayley` must be 'exact' or 'neumann', got {cayley!r}")
        if exp not in ("exact", "first_order"):
            raise ValueError(f"`exp` must be 'exact' or 'first_order', got {exp!r}")
        if graft not in _GRAFT:
            raise ValueError(f"`graft` must be one of {_GRAFT}, got {graft!r}")
        if nonfinite not in _NONFINITE:
            raise ValueError(f"`nonfinite` must be one of {_NONFINITE}, got {nonfinite!r}")
        if max_update_rms is not None:
            positive("max_update_rms", max_update_rms)
        if not (isinstance(precond_dtype, torch.dtype) and precond_dtype.is_floating_point):
            raise ValueError(
                f"`precond_dtype` must be a floating torch.dtype, got {precond_dtype!r}"
            )
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"`betas` must be in [0, 1), got {betas!r}")
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
            max_update_rms=max_update_rms,
            graft=graft,
            betas=tuple(betas),
            eps=eps,
            max_precond_dim=max_precond_dim,
            precond_dtype=precond_dtype,
        )
        super().__init__(params, defaults)
        self.nonfinite = nonfinite
        self.skipped_steps = 0

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[dict]]:
        params, grads, states = [], [], []
        for prm in group["params"]:
            if prm.grad is None:
                continue
            g = prm.grad
            if g.is_sparse:
                raise RuntimeError("SpectralKron does not support sparse gradients")
            if torch.is_complex(prm) or torch.is_complex(g):
                raise RuntimeError("SpectralKron does not support complex parameters or gradients")
            state = self.state[prm]
            if not state:
                plan = _plan(prm.shape, group["max_precond_dim"])
                state.update(_init_state(prm, plan, group["precond_dtype"], group["graft"]))
            params.append(prm)
            grads.append(g)
            states.append(state)
        return params, grads, states

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimisation step (``closure`` re-evaluates the loss, as in ``torch.optim``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [(group, *self._init_group(group)) for group in self.param_groups]
        all_grads = [g for _, _, grads, _ in work for g in grads]
        if all_grads:
            finite = torch.stack([torch.isfinite(g).all() for g in all_grads]).all()
            if not bool(finite):
                if self.nonfinite == "raise":
                    raise ValueError(
                        "SpectralKron: a gradient contains NaN or inf; no state was changed "
                        "(pass nonfinite='skip' to skip such steps instead)"
                    )
                self.skipped_steps += 1
                return loss
        for group, params, grads, states in work:
            if not params:
                continue
            spectral_kron(
                params,
                grads,
                states,
                **{
                    k: group[k]
                    for k in (
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
                        "max_update_rms",
                        "graft",
                        "betas",
                        "eps",
                        "max_precond_dim",
                        "precond_dtype",
                    )
                },
            )
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state without torch's default cast of floating state to the parameter dtype.

        ``torch.optim.Optimizer.load_state_dict`` casts every floating state tensor to its
        parameter's dtype, which would silently downcast float32 factors of a bf16 model;
        here tensors only move to the parameter's device and keep their saved dtype.
        """
        import copy

        saved_state = state_dict["state"]
        super().load_state_dict({**state_dict, "state": {}})
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [prm for g in self.param_groups for prm in g["params"]]
        id_to_param = dict(zip(saved_ids, params))
        for pid, st in saved_state.items():
            prm = id_to_param[pid]
            new: dict[str, Any] = {}
            for k, v in st.items():
                if isinstance(v, Tensor):
                    new[k] = (
                        v.detach().clone() if k == "step" else v.detach().to(prm.device, copy=True)
                    )
                else:
                    new[k] = copy.deepcopy(v)
            self.state[prm] = new
