""":class:`SpectralKron`: the NumPy adapter's optimizer. It owns the per-parameter state
(plain dicts of arrays, committed only once a step succeeded) and routes each step through
the engine (``optim.buckets`` → ``optim.bucket_step`` → ``optim.update_params``: math
§3–§5); the parameters' container is :class:`~._layout.Layout`'s, the state dict
:mod:`._checkpoint`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import optim
from .._array import Array
from ._checkpoint import export, restore
from ._layout import Layout, Params
from ._options import check_options


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
        >>> for _ in range(100):
        ...     params = opt.step(params, [2 * (params[0] - target), 2 * params[1]])
        >>> [p.shape for p in params], opt.steps, bool(loss(params) < 0.01 * l0)
        ([(5, 4), (4,)], [100, 100], True)
    """

    def __init__(
        self, params: Params, lr: float = 1e-3, precond_lr: float = 0.1, **options: Any
    ) -> None:
        self._opts = check_options({"lr": lr, "precond_lr": precond_lr, **options})
        self.skipped_steps = 0
        self._warned = False  # a RejectedRefreshWarning was given (once per optimizer)
        self._layout = Layout.of(params)
        n = len(self._layout.shapes)
        self._plans = [self._layout.plan(i, self._opts) for i in range(n)]
        self._states = [self._layout.fresh(i, self._opts) for i in range(n)]

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
        return self._layout.structure(self._states)

    @property
    def plans(self) -> dict[str, tuple[Any, ...]] | list[tuple[Any, ...]]:
        """Per-parameter :func:`optim.plan` (``("diag",)`` or ``("kron", r, c, …)``)."""
        return self._layout.structure(self._plans)

    @property
    def steps(self) -> dict[str, int] | list[int]:
        """Per-parameter step counters (a parameter given a ``None`` gradient is not counted)."""
        return self._layout.structure([s["step"] for s in self._states])

    @property
    def refreshes(self) -> dict[str, int] | list[int]:
        """Per-parameter number of preconditioner refreshes (accepted or rejected)."""
        return self._layout.structure([s["refreshes"] for s in self._states])

    @property
    def rejected(self) -> dict[str, int] | list[int]:
        """Per-parameter number of refreshes discarded by keep-last-good."""
        return self._layout.structure([s["rejected"] for s in self._states])

    # ----------------------------------------------------------------- the step
    def step(self, params: Params, grads: Params) -> Params:
        """One optimisation step: returns the new parameters (same container as ``params``).

        ``grads`` has the params' structure; a ``None`` gradient leaves that parameter (and
        its counters) as it is. Everything is validated before any state changes: a bad
        structure/shape/dtype or a non-finite gradient (``nonfinite="raise"``) leaves the
        optimizer as it was; with ``nonfinite="skip"`` the step returns copies of ``params``.
        """
        lay = self._layout
        ps = lay.unpack(params, "params", allow_none=False)
        gs = lay.unpack(grads, "grads", allow_none=True)
        active = [i for i, g in enumerate(gs) if g is not None]
        if not optim.check_finite_grads(lay.xp, [gs[i] for i in active]):
            if self.nonfinite == "raise":
                raise ValueError(optim.NONFINITE_MESSAGE)
            self.skipped_steps += 1
            return lay.pack([lay.xp.asarray(a, copy=True) for a in ps])
        states = [dict(s) for s in self._states]  # committed only once the step succeeded
        # Overflow/NaN inside a refresh is expected and handled (keep-last-good): no warnings.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            new = self._update(ps, gs, states, active)
        seen, now = (sum(s["rejected"] for s in ss) for ss in (self._states, states))
        self._warned = optim.warn_rejected_once(self._warned, seen, now, stacklevel=2)
        self._states = states
        return lay.pack(new)

    def _update(
        self, ps: list[Array], gs: list[Array], states: list[dict[str, Any]], active: list[int]
    ) -> list[Array]:
        """The engine's step (``optim.buckets`` → ``bucket_step`` → ``update_params``)."""
        lay, o = self._layout, self._opts
        xp, dts = lay.xp, {i: lay.precond_dtype(i, o) for i in active}
        entries = [
            (
                self._plans[i],
                (str(dts[i]), str(lay.devices[i])),
                states[i]["step"],
                states[i]["refreshes"],
            )
            for i in active
        ]
        directions: dict[int, Array] = {}
        for key, pos in optim.buckets(entries, o).items():
            idx = [active[j] for j in pos]
            pre = [optim.precond_of(states[i], key.plan) for i in idx]
            res = optim.bucket_step(pre, [gs[i] for i in idx], key, o)
            for j, (i, st, u) in enumerate(zip(idx, res.states, res.directions)):
                s = states[i]
                s.update(_arrays(xp, optim.flat_state(st)))
                s["rejected"] += 0 if res.rejected is None else int(res.rejected[j])
                s["refreshes"] += int(key.refresh)
                directions[i] = u
        for i in active:
            states[i]["step"] += 1
        new, slots = optim.update_params(
            [ps[i] for i in active],
            [xp.astype(gs[i], dts[i]) for i in active],
            [directions[i] for i in active],
            [optim.slots_of(states[i]) for i in active],
            steps=[states[i]["step"] for i in active],
            options=o,
        )
        out = list(ps)
        for i, w, sl in zip(active, new, slots):
            out[i] = w
            states[i].update(_arrays(xp, optim.flat_state(sl)))
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
        return export(self._layout, self._opts, self.skipped_steps, self._plans, self._states)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Validate and restore :meth:`state_dict` output (arrays may come from ``np.load``).

        Checks the format tag, that the parameters (names, shapes, dtypes) are this
        optimizer's, the options, each parameter's plan and counters, every array's key,
        shape and dtype, and the values (``optim.check_precond``: finite, ``d > 0``,
        orthogonal ``B``, ``Π d = 1``); raises a ValueError naming the parameter and the
        field, and changes nothing then.
        The options (learning rate included) are restored as saved, as in ``torch.optim``.
        """
        loaded = restore(self._layout, self._opts, state_dict)  # raises before any change
        self._opts, self.skipped_steps, self._plans, self._states = loaded


def _arrays(xp: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as arrays: NumPy returns scalars for 0-d results, whose float32 ``pow``/
    ``exp`` round differently from a 0-d array's, and a restored state holds arrays (a
    0-d parameter's resume was not bitwise)."""
    return {k: xp.asarray(v) for k, v in values.items()}
