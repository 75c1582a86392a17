"""Data-parallel ``torch.distributed`` support: :class:`DistributedSpectralKron` (ZeRO-1 style).

The math is the core's (math §3 diagonal scheme, §4 Kronecker scheme, §5 conventions),
reached through :func:`spectral_curv.torch.spectral_kron`; this module only distributes it.
As in Distributed Shampoo, the preconditioner work is split across the data-parallel ranks:

- gradients are assumed already averaged across ranks (``DistributedDataParallel`` does it);
- every parameter gets one *owner* rank, chosen by a greedy longest-processing-time (LPT)
  balance of its refresh cost (:func:`refresh_cost`, :func:`assign_owners`); the assignment
  is a pure function of the parameter shapes and the world size, so it is identical on every
  rank without any communication;
- each rank creates state (factors, momentum, graft moments) and computes the update only
  for the parameters it owns, through the functional :func:`spectral_curv.torch.spectral_kron`
  (the same code path as :class:`~spectral_curv.torch.SpectralKron`);
- the updated parameters are then shared: one ``broadcast`` per rank (and per dtype/device)
  of a flat buffer holding that rank's owned parameters.

FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters that are ``DTensor`` s sharded
on dim 0 over a 1-D mesh of the same ranks are supported. The factors of a sharded matrix are
those of the *full* matrix: its owner gathers every rank's parameter rows and gradient rows
(one ``gather`` per owner and dtype of a flat, padded buffer), steps the full matrix like any
other parameter, and scatters the new rows back (one ``scatter`` per owner and dtype). Other
placements (``Shard(1)``, ``Replicate``, 2-D meshes: TP, HSDP) raise a ``TypeError``.

Memory: each rank holds only its own layers' state (factors, momentum, graft moments; for a
sharded parameter these are full-matrix sized, on the owner only), about ``1/N`` of the total
when the balance is good; during a step an owner also holds its sharded parameters' full
values and gradients. Communication per step: replicated parameters once (the broadcast, the
volume of ZeRO-1's all-gather), on top of DDP's all-reduce; sharded parameters: gather of the
parameter and gradient rows to the owner (2× their size) and scatter of the new rows (1×).

Checkpoints: :meth:`DistributedSpectralKron.state_dict` returns this rank's shard (load it
on the same world size); :meth:`DistributedSpectralKron.dcp_state_dict` /
:meth:`~DistributedSpectralKron.load_dcp_state_dict` go through
``torch.distributed.checkpoint`` (``dcp.save`` / ``dcp.load``), which can also load on another
world size.

Example (launched with ``torchrun --nproc_per_node=N train.py``)::

    dist.init_process_group("nccl")
    model = DDP(model.cuda(), device_ids=[local_rank])   # or fully_shard(...) each block
    opt = DistributedSpectralKron(model.parameters(), lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import optim
from .torch import SpectralKron, init_state
from .torch._optimizer import LAYOUT_OPTIONS

__all__ = [
    "DistributedSpectralKron",
    "assign_owners",
    "balance_report",
    "refresh_cost",
]


def refresh_cost(shape: Sequence[int], max_precond_dim: int = optim.DEFAULT_MAX_PRECOND_DIM) -> int:
    """Matmul-cost model (flops, up to a constant) of one preconditioner refresh + direction.

    Kronecker plan ``(r, c)`` (:func:`spectral_curv.optim.plan`): a full side ``n`` costs
    ``n³`` (the factor's own products) plus ``r·c·n`` (the gradient times the factor), i.e.
    ``r³ + c³ + r·c·(r + c)`` when both sides are full; a diagonal side costs ``r·c``
    (elementwise). Diagonal plans (biases, norms) cost their size. The elementwise update
    (``r·c``) is added to every parameter so that zero-cost shapes still weigh something.

    Example::

        >>> from spectral_curv.distributed import refresh_cost
        >>> refresh_cost((4, 3)), refresh_cost((7,)), refresh_cost((2, 10), max_precond_dim=8)
        (187, 7, 88)
    """
    pl = optim.plan(tuple(int(s) for s in shape), max_precond_dim)
    numel = 1
    for s in shape:
        numel *= int(s)
    if pl[0] == "diag":
        return max(numel, 1)
    _, r, c, diag_r, diag_c = pl
    cost = r * c
    for n, is_diag in ((r, diag_r), (c, diag_c)):
        cost += r * c if is_diag else n**3 + r * c * n
    return cost


def assign_owners(
    costs: Sequence[float], world_size: int, loads: Sequence[float] | None = None
) -> tuple[list[int], list[float]]:
    """Greedy LPT assignment: returns ``(owners, loads)``.

    Items are taken by decreasing cost (ties: lower index first) and each goes to the rank
    with the smallest load so far (ties: lower rank). Deterministic, so every rank computes
    the same assignment. ``loads`` continues from an earlier assignment (new param groups).

    Example::

        >>> from spectral_curv.distributed import assign_owners
        >>> assign_owners([5.0, 1.0, 3.0, 3.0], 2)
        ([0, 0, 1, 1], [6.0, 6.0])
        >>> assign_owners([2.0], 2, loads=[8.0, 4.0])
        ([1], [8.0, 6.0])
    """
    if world_size < 1:
        raise ValueError(f"`world_size` must be >= 1, got {world_size!r}")
    load = list(loads) if loads is not None else [0.0] * world_size
    if len(load) != world_size:
        raise ValueError("`loads` must have one entry per rank")
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda k: (load[k], k))
        owners[i] = rank
        load[rank] += costs[i]
    return owners, load


def balance_report(loads: Sequence[float]) -> dict[str, Any]:
    """Per-rank cost share versus the ideal ``1/N``.

    Returns ``{"world_size", "shares", "ideal", "max_share", "max_over_ideal"}``;
    ``max_over_ideal`` is the largest share divided by ``1/N`` (1.0 is a perfect balance).

    Example::

        >>> from spectral_curv.distributed import balance_report
        >>> rep = balance_report([6.0, 2.0])
        >>> rep["world_size"], rep["shares"], rep["max_over_ideal"]
        (2, [0.75, 0.25], 1.5)
    """
    n = len(loads)
    total = float(sum(loads))
    shares = [float(x) / total if total > 0 else 1.0 / n for x in loads]
    ideal = 1.0 / n
    return {
        "world_size": n,
        "shares": shares,
        "ideal": ideal,
        "max_share": max(shares),
        "max_over_ideal": max(shares) / ideal,
    }


def _is_dtensor(t: Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - older torch
        return False
    return isinstance(t, DTensor)


class DistributedSpectralKron(SpectralKron):
    """:class:`~spectral_curv.torch.SpectralKron` for data parallelism, ZeRO-1 style.

    Every rank holds all parameters (``param_groups`` list them all, so LR schedulers and
    ``zero_grad`` work as usual) but state only for the parameters it owns
    (:meth:`owner_of`). :meth:`step` updates the owned parameters with the functional
    :func:`spectral_curv.torch.spectral_kron`, then broadcasts them from their owners.

    Args:
        params: parameters or param groups, in the same order on every rank.
        process_group: the ``torch.distributed`` group (None: the default group). Without an
            initialised process group this behaves as a single rank.
        **options: :class:`SpectralKron` options (``lr``, ``precond_lr``, ``p``, ...).

    Gradients must already be averaged across ranks (DDP, or FSDP2's reduce-scatter). The
    non-finite check runs on every gradient (identical on all ranks after the all-reduce;
    for sharded parameters the local verdicts are combined with one all-reduce), so a
    raise/skip happens on every rank alike.

    Sharded parameters (``DTensor``, ``Shard(0)`` on a 1-D mesh spanning ``process_group``,
    as ``fully_shard`` makes them) are keyed in ``state`` by the DTensor, but their state is
    that of the full matrix (the owner steps the gathered full matrix).

    Example (without a process group: a single rank, the same step as ``SpectralKron``)::

        >>> import torch
        >>> from spectral_curv.distributed import DistributedSpectralKron
        >>> from spectral_curv.torch import SpectralKron
        >>> w1, w2 = (torch.nn.Parameter(torch.ones(3, 2)) for _ in range(2))
        >>> opt1, opt2 = SpectralKron([w1], lr=0.1), DistributedSpectralKron([w2], lr=0.1)
        >>> w1.grad, w2.grad = torch.arange(6.0).reshape(3, 2), torch.arange(6.0).reshape(3, 2)
        >>> opt1.step()
        >>> opt2.step()
        >>> opt2.world_size, opt2.owner_of(w2), torch.equal(w1, w2)
        (1, 0, True)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        process_group: dist.ProcessGroup | None = None,
        **options: Any,
    ) -> None:
        self.process_group = process_group
        if dist.is_available() and dist.is_initialized():
            self.world_size = dist.get_world_size(process_group)
            self.rank = dist.get_rank(process_group)
        else:
            self.world_size, self.rank = 1, 0
        self._owner: dict[Tensor, int] = {}
        self._cost: dict[Tensor, float] = {}
        self._loads: list[float] = [0.0] * self.world_size
        self._sharded: set[Tensor] = set()  # DTensor (FSDP2) parameters
        self._proxies: set[Tensor] = set()  # full-matrix stand-ins during a step
        self._swapped = False  # the groups hold this rank's parameters only (in a step)
        super().__init__(params, **options)

    # -- assignment ---------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """``torch.optim`` semantics; the new parameters are assigned owners on top of the
        current loads (existing assignments never move, so no state is lost)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for prm in group["params"]:
            if _is_dtensor(prm):
                self._check_sharded(prm)
                self._sharded.add(prm)
        new = [prm for prm in group["params"] if prm not in self._owner]
        costs = [float(refresh_cost(prm.shape, group["max_precond_dim"])) for prm in new]
        owners, self._loads = assign_owners(costs, self.world_size, self._loads)
        for prm, owner, cost in zip(new, owners, costs):
            self._owner[prm] = owner
            self._cost[prm] = cost

    def owner_of(self, param: Tensor) -> int:
        """The rank (in ``process_group``) that owns ``param``'s state and update."""
        return self._owner[param]

    @property
    def assignment(self) -> list[int]:
        """Owner rank of every parameter, in ``param_groups`` order."""
        return [self._owner[prm] for g in self.param_groups for prm in g["params"]]

    def owned_params(self) -> list[Tensor]:
        """The parameters this rank owns, in ``param_groups`` order."""
        return [prm for g in self.param_groups for prm in g["params"] if self._owned(prm)]

    def balance(self) -> dict[str, Any]:
        """:func:`balance_report` of the current assignment (per-rank refresh-cost share)."""
        return balance_report(self._loads)

    def _owned(self, prm: Tensor) -> bool:
        return self._owner[prm] == self.rank

    def _check_sharded(self, prm: Tensor) -> None:
        """Accept a DTensor sharded on dim 0 over a 1-D mesh of this optimizer's ranks."""
        from torch.distributed.tensor import Shard

        placements = tuple(prm.placements)  # type: ignore[attr-defined]
        mesh = prm.device_mesh  # type: ignore[attr-defined]
        if mesh.ndim != 1 or placements != (Shard(0),):
            raise TypeError(
                "DistributedSpectralKron supports DTensor parameters sharded on dim 0 over a "
                "1-D device mesh (FSDP2 `fully_shard`, or `distribute_tensor(t, mesh, "
                f"[Shard(0)])`); got placements {placements} on a {mesh.ndim}-D mesh "
                "(tensor parallelism, HSDP and replicated DTensors are not supported)"
            )
        if self.world_size == 1 and not (dist.is_available() and dist.is_initialized()):
            raise TypeError("DTensor parameters need an initialised process group")
        group_ranks = dist.get_process_group_ranks(self.process_group or dist.group.WORLD)
        if dist.get_process_group_ranks(mesh.get_group()) != group_ranks:
            raise TypeError(
                "DistributedSpectralKron: the DTensor's device mesh must span exactly the "
                f"optimizer's process group (ranks {group_ranks}, in order)"
            )
        local = prm.to_local()  # type: ignore[attr-defined]
        if prm.ndim == 0 or local.shape[0] != _rows(prm.shape[0], self.world_size)[self.rank]:
            raise TypeError(
                "DistributedSpectralKron: unexpected local shard shape "
                f"{tuple(local.shape)} of a {tuple(prm.shape)} DTensor on rank {self.rank} "
                "(expected torch.chunk-style Shard(0) rows)"
            )

    # -- step ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Update the owned parameters, then share every parameter from its owner.

        Replicated (DDP) parameters are broadcast from their owner. A sharded (DTensor)
        parameter's shards and gradient shards are first gathered on its owner, which steps
        the full matrix like any other parameter and scatters the new rows back.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_layouts()  # on the groups as every rank has them (not the swapped ones)
        sharded = [
            prm
            for g in self.param_groups
            for prm in g["params"]
            if prm in self._sharded and prm.grad is not None
        ]
        if self._sharded and not self._sharded_grads_finite(sharded):
            if self.nonfinite == "raise":
                raise ValueError(
                    "SpectralKron: a gradient contains NaN or inf; no state was changed "
                    "(pass nonfinite='skip' to skip such steps instead)"
                )
            self.skipped_steps += 1
            return loss
        proxies = self._gather(sharded)
        saved = [g["params"] for g in self.param_groups]
        for g in self.param_groups:  # owned sharded params -> full stand-ins; others dropped
            g["params"] = [
                proxies.get(prm, prm)
                for prm in g["params"]
                if prm not in self._sharded or prm in proxies
            ]
        for prm, full in proxies.items():
            self.state[full] = self.state[prm]  # the same dict: the step fills it in place
        self._proxies = set(proxies.values())
        skipped = self.skipped_steps
        self._swapped = True  # no layout check on the swapped groups (done above)
        try:
            super().step()  # validates the gradients, updates the owned parameters
        finally:
            self._swapped = False
            for g, params in zip(self.param_groups, saved):
                g["params"] = params
            for full in proxies.values():
                del self.state[full]
            self._proxies = set()
        if self.skipped_steps == skipped:
            self._scatter(sharded, proxies)
            self._share()
        return loss

    def _owns(self, param: Tensor) -> bool:
        return param in self._proxies or self._owned(param)

    def _check_layouts(self) -> None:
        if not self._swapped:
            super()._check_layouts()

    def _agree(self, problem: str | None) -> str | None:
        """Every rank raises where one does: a parameter has state on its owner only (one
        all-reduce, only in a step whose layout options changed)."""
        if self.world_size == 1:
            return problem
        prm = next(p for g in self.param_groups for p in g["params"])
        local = prm.to_local() if prm in self._sharded else prm  # type: ignore[attr-defined]
        flag = torch.tensor([0 if problem is None else 1], dtype=torch.int32, device=local.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.process_group)
        if problem is None and int(flag.item()):
            problem = (
                "DistributedSpectralKron: a parameter owned by another rank has state for "
                "other options than its group's (that rank names it): "
                f"{', '.join(map(repr, LAYOUT_OPTIONS))} cannot change after the first step"
            )
        return problem

    def _sharded_grads_finite(self, sharded: list[Tensor]) -> bool:
        """Validate the local gradient shards, then agree across ranks (one all-reduce)."""
        from torch.distributed.tensor import DTensor

        ok = True
        for prm in sharded:
            g = prm.grad
            if not isinstance(g, DTensor) or tuple(g.placements) != tuple(prm.placements):  # type: ignore[attr-defined]
                raise TypeError(
                    "DistributedSpectralKron: the gradient of a sharded parameter must be a "
                    "DTensor with the parameter's placements (Shard(0)), as FSDP2 produces"
                )
            local = g.to_local()
            if local.is_sparse or torch.is_complex(local):
                raise RuntimeError("SpectralKron does not support sparse or complex gradients")
            ok = ok and bool(torch.isfinite(local).all())
        device = next(iter(self._sharded)).to_local().device  # type: ignore[attr-defined]
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.process_group)
        return bool(flag.item())

    def _global(self, rank: int) -> int:
        if self.process_group is None:
            return rank
        return dist.get_global_rank(self.process_group, rank)

    def _gather(self, sharded: list[Tensor]) -> dict[Tensor, Tensor]:
        """Gather the shards and gradient shards of each sharded parameter on its owner.

        One ``gather`` per (owner, dtype, device) of a flat buffer; every rank pads its rows
        to ``ceil(rows / N)`` so the buffers have equal sizes. Returns, on the owner, a full
        plain tensor per owned parameter with ``.grad`` the full gradient.
        """
        proxies: dict[Tensor, Tensor] = {}
        n = self.world_size
        for owner in range(n):
            items: list[tuple[Tensor, Tensor, Tensor]] = []  # (param, local shard, grad shard)
            for prm in sharded:
                if self._owner[prm] == owner:
                    items.append((prm, prm.to_local(), prm.grad.to_local()))  # type: ignore[attr-defined, union-attr]
            pieces: list[tuple[Tensor, int, Tensor]] = []  # (param, slot, local piece)
            for prm, loc, gloc in items:
                pieces += [(prm, 0, loc), (prm, 1, gloc)]
            fulls: dict[tuple[Tensor, int], list[Tensor]] = {}
            for (dtype, device), bucket in _buckets(pieces).items():
                sizes = [_padded_numel(prm, n) for prm, _, _ in bucket]
                send = torch.zeros(sum(sizes), dtype=dtype, device=device)
                off = 0
                for (_, _, loc), size in zip(bucket, sizes):
                    send[off : off + loc.numel()] = loc.reshape(-1)
                    off += size
                recv = [torch.empty_like(send) for _ in range(n)] if owner == self.rank else None
                dist.gather(send, recv, dst=self._global(owner), group=self.process_group)
                if recv is None:
                    continue
                off = 0
                for (prm, slot, _), size in zip(bucket, sizes):
                    rows = _rows(prm.shape[0], n)
                    per_row = prm.numel() // max(prm.shape[0], 1)
                    parts = [recv[k][off : off + rows[k] * per_row] for k in range(n)]
                    fulls[(prm, slot)] = [torch.cat(parts).view(prm.shape)]
                    off += size
            for prm, _, _ in items:
                if owner == self.rank:
                    full = fulls[(prm, 0)][0]
                    full.grad = fulls[(prm, 1)][0]
                    proxies[prm] = full
        return proxies

    def _scatter(self, sharded: list[Tensor], proxies: dict[Tensor, Tensor]) -> None:
        """Scatter each owner's updated full parameters back to every rank's local shard."""
        n = self.world_size
        for owner in range(n):
            mine = [prm for prm in sharded if self._owner[prm] == owner]
            pieces = [(prm, 0, prm.to_local()) for prm in mine]  # type: ignore[attr-defined]
            for (dtype, device), bucket in _buckets(pieces).items():
                sizes = [_padded_numel(prm, n) for prm, _, _ in bucket]
                total = sum(sizes)
                send: list[Tensor] | None = None
                if owner == self.rank:
                    send = [torch.zeros(total, dtype=dtype, device=device) for _ in range(n)]
                    off = 0
                    for (prm, _, _), size in zip(bucket, sizes):
                        rows = _rows(prm.shape[0], n)
                        flat = proxies[prm].reshape(prm.shape[0], -1)
                        start = 0
                        for k in range(n):
                            chunk = flat[start : start + rows[k]].reshape(-1)
                            send[k][off : off + chunk.numel()] = chunk
                            start += rows[k]
                        off += size
                recv = torch.empty(total, dtype=dtype, device=device)
                dist.scatter(recv, send, src=self._global(owner), group=self.process_group)
                off = 0
                for (_, _, loc), size in zip(bucket, sizes):
                    loc.copy_(recv[off : off + loc.numel()].view_as(loc))
                    off += size

    def _share(self) -> None:
        """Broadcast each rank's owned replicated parameters (one flat buffer per dtype/device)."""
        if self.world_size == 1:
            return
        for src in range(self.world_size):
            buckets: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
            for g in self.param_groups:
                for prm in g["params"]:
                    if self._owner[prm] == src and prm not in self._sharded:
                        buckets.setdefault((prm.dtype, prm.device), []).append(prm)
            # Same iteration order on every rank: the keys come from the same param order.
            for tensors in buckets.values():
                flat = torch.cat([t.detach().reshape(-1) for t in tensors])
                dist.broadcast(flat, src=self._global(src), group=self.process_group)
                if src != self.rank:
                    offset = 0
                    for t in tensors:
                        n = t.numel()
                        t.detach().copy_(flat[offset : offset + n].view_as(t))
                        offset += n

    # -- checkpointing ------------------------------------------------------------------

    def dcp_state_dict(self) -> dict[str, Any]:
        """This rank's optimizer state for ``torch.distributed.checkpoint`` (DCP).

        A flat dict: ``"state.<i>.<key>"`` (``i`` the parameter's index in ``param_groups``
        order) for the state of every *owned* parameter, whole tensors even for sharded
        parameters (the owner steps the full matrix), so every key lives on exactly one rank
        and DCP writes each tensor once; plus ``"param_groups"`` (hyperparameters) and
        ``"skipped_steps"``. The values are the live state tensors: state not created yet is
        allocated here (a fresh state, as the first step would create it), so the same call
        on a fresh optimizer gives the dict ``dcp.load`` loads into, in place::

            dcp.save({"model": model.state_dict(), "optim": opt.dcp_state_dict()}, checkpoint_id=d)
            sd = {"model": model.state_dict(), "optim": opt.dcp_state_dict()}
            dcp.load(sd, checkpoint_id=d)
            model.load_state_dict(sd["model"]); opt.load_dcp_state_dict(sd["optim"])

        As every state tensor is whole and keyed by parameter index, a checkpoint can be
        loaded on another world size (the new owners read the keys they need).
        """
        out: dict[str, Any] = {}
        i = 0
        for g in self.param_groups:
            for prm in g["params"]:
                if self._owned(prm):
                    st = self.state[prm]
                    if not st:  # as the first step creates it: every option of the group
                        st.update(init_state(prm, optim.Options.trusted(g)))
                    for key, val in st.items():
                        out[f"state.{i}.{key}"] = val
                i += 1
        out["param_groups"] = [
            {k: v for k, v in g.items() if k != "params"} for g in self.param_groups
        ]
        out["skipped_steps"] = self.skipped_steps
        return out

    def load_dcp_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Finish a ``dcp.load`` into :meth:`dcp_state_dict`'s dict: hyperparameters and the
        skip count are applied; the state tensors were already loaded in place (they are
        copied again here when ``state_dict`` holds other tensors)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("load_dcp_state_dict: the number of param groups differs")
        for i, (g, saved) in enumerate(zip(self.param_groups, groups)):
            for k in LAYOUT_OPTIONS:  # they fix the state that dcp_state_dict() laid out
                if k in saved and saved[k] != g[k]:
                    raise ValueError(
                        f"load_dcp_state_dict: param group {i} was saved with {k}={saved[k]!r}, "
                        f"this optimizer has {g[k]!r}: create it with the checkpoint's "
                        f"{', '.join(LAYOUT_OPTIONS)} (they fix the state's layout)"
                    )
        for g, saved in zip(self.param_groups, groups):
            g.update({k: v for k, v in saved.items() if k != "params"})
        self.skipped_steps = int(state_dict["skipped_steps"])
        i = 0
        for g in self.param_groups:
            for prm in g["params"]:
                if self._owned(prm):
                    st = self.state[prm]
                    for key in list(st):
                        src = state_dict.get(f"state.{i}.{key}")
                        if src is None:
                            raise KeyError(f"load_dcp_state_dict: missing state.{i}.{key}")
                        if src is not st[key]:
                            st[key].copy_(src)
                i += 1
        # the loaded counters are the baseline of the once-only warning (as load_state_dict)
        self._rejected_seen = sum(
            int(st["rejected"])
            for st in self.state.values()
            if isinstance(st, dict) and "rejected" in st
        )

    def state_dict(self) -> dict[str, Any]:
        """This rank's shard: the state of the owned parameters only, plus the assignment
        (``"distributed"``: world size, rank, owners) checked by :meth:`load_state_dict`."""
        sd = super().state_dict()
        sd["distributed"] = {
            "world_size": self.world_size,
            "rank": self.rank,
            "owners": self.assignment,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load this rank's shard (saved by :meth:`state_dict` on the same world size)."""
        state_dict = dict(state_dict)
        meta = state_dict.pop("distributed", None)
        if meta is not None:
            if meta["world_size"] != self.world_size or meta["owners"] != self.assignment:
                raise ValueError(
                    "DistributedSpectralKron.load_state_dict: the shard was saved with world "
                    f"size {meta['world_size']} and a different owner assignment; resharding "
                    "is not supported (load on the same world size and parameter list)"
                )
            if meta["rank"] != self.rank:
                raise ValueError(
                    f"DistributedSpectralKron.load_state_dict: shard of rank {meta['rank']} "
                    f"loaded on rank {self.rank}"
                )
        super().load_state_dict(state_dict)


def _rows(n: int, world: int) -> list[int]:
    """Rows of each rank under ``Shard(0)`` (``torch.chunk`` semantics, as DTensor / FSDP2)."""
    c = -(-n // world) if n else 0
    return [max(0, min(c, n - k * c)) for k in range(world)]


def _padded_numel(prm: Tensor, world: int) -> int:
    """Elements of the largest shard: every rank's piece is padded to this in a buffer."""
    n0 = prm.shape[0]
    return _rows(n0, world)[0] * (prm.numel() // max(n0, 1))


def _buckets(
    pieces: list[tuple[Tensor, int, Tensor]],
) -> dict[tuple[torch.dtype, torch.device], list[tuple[Tensor, int, Tensor]]]:
    """Group local pieces by (dtype, device), keeping the (rank-independent) order."""
    out: dict[tuple[torch.dtype, torch.device], list[tuple[Tensor, int, Tensor]]] = {}
    for prm, slot, loc in pieces:
        out.setdefault((loc.dtype, loc.device), []).append((prm, slot, loc))
    return out
