"""Data-parallel ``torch.distributed`` support: :class:`DistributedSpectralKron` (ZeRO-1 style).

The math is the core's (SPEC §3 diagonal scheme, §4 Kronecker scheme, §5 conventions),
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

Memory: each rank holds only its own layers' factors (about ``1/N`` of the total when the
balance is good). Communication: the parameters once per step (the same volume as the
all-gather of ZeRO-1), on top of DDP's gradient all-reduce.

Example (launched with ``torchrun --nproc_per_node=N train.py``)::

    dist.init_process_group("nccl")
    model = DDP(model.cuda(), device_ids=[local_rank])
    opt = DistributedSpectralKron(model.parameters(), lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()

Not supported (yet): FSDP2 / ``DTensor`` parameters (a clear ``TypeError`` is raised) and
``torch.distributed.checkpoint``; :meth:`DistributedSpectralKron.state_dict` returns each
rank's own shard (save one file per rank, load it back on the same world size).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import optim
from .torch import SpectralKron

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

    Gradients must already be averaged across ranks (DDP). The non-finite check runs on
    every gradient (identical on all ranks after the all-reduce), so a raise/skip happens
    on every rank alike.
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
        super().__init__(params, **options)

    # -- assignment ---------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """``torch.optim`` semantics; the new parameters are assigned owners on top of the
        current loads (existing assignments never move, so no state is lost)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for prm in group["params"]:
            if _is_dtensor(prm):
                raise TypeError(
                    "DistributedSpectralKron does not support DTensor (FSDP2 / tensor-parallel) "
                    "parameters yet; use it with DistributedDataParallel (replicated params)"
                )
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

    # -- step ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Update the owned parameters, then broadcast every parameter from its owner."""
        skipped = self.skipped_steps
        loss = super().step(closure)  # validates every gradient, updates the owned ones
        if self.skipped_steps == skipped:
            self._share()
        return loss

    def _owns(self, param: Tensor) -> bool:
        return self._owned(param)

    def _share(self) -> None:
        """Broadcast each rank's owned parameters (one flat buffer per dtype/device)."""
        if self.world_size == 1:
            return
        for src in range(self.world_size):
            buckets: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
            for g in self.param_groups:
                for prm in g["params"]:
                    if self._owner[prm] == src:
                        buckets.setdefault((prm.dtype, prm.device), []).append(prm)
            # Same iteration order on every rank: the keys come from the same param order.
            for tensors in buckets.values():
                flat = torch.cat([t.detach().reshape(-1) for t in tensors])
                dist.broadcast(
                    flat,
                    src=dist.get_global_rank(self.process_group, src)
                    if self.process_group is not None
                    else src,
                    group=self.process_group,
                )
                if src != self.rank:
                    offset = 0
                    for t in tensors:
                        n = t.numel()
                        t.detach().copy_(flat[offset : offset + n].view_as(t))
                        offset += n

    # -- checkpointing ------------------------------------------------------------------

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
