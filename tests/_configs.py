"""The optimizer configurations every adapter test runs: one table, shared by
``test_torch_optim.py`` (against its reference loop), ``test_numpy_optim.py`` (against the
torch optimizer) and ``test_contract.py`` (torch vs NumPy vs optax).

Each entry overrides ``optim.Options``' defaults; together they cover every Cayley mode,
both ``exp`` maps, ``p`` ≠ 2, ``gamma`` < 1, skipped refreshes, re-orthonormalisation,
Adam grafting, RMS clipping (partially binding), weight decay, momentum on (Nesterov and
heavy ball) and off,
corrected eigenvalues, and a diagonal side (``max_precond_dim=10``: a ``6 × 15`` or
``3 × 18`` weight keeps its column side diagonal).
"""

from __future__ import annotations

from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    # every default (warmup 10, interval 2, reorth every 5th refresh, quadratic Cayley, p 1.5)
    "defaults": dict(lr=0.01),
    "quadratic-first_order": dict(
        lr=0.05,
        precond_lr=0.3,
        damping=1e-4,
        momentum=0.9,
        weight_decay=0.01,
        update_interval=2,
        precond_warmup=3,
        reorth_interval=2,
    ),
    "neumann-first_order": dict(
        cayley="neumann",
        lr=0.05,
        precond_lr=0.3,
        damping=1e-4,
        momentum=0.5,
        nesterov=True,  # Nesterov's step (the default is heavy ball)
        weight_decay=0.01,
        update_interval=2,
        precond_warmup=3,
        reorth_interval=3,
    ),
    "exact-exact-p1": dict(
        lr=0.003,
        precond_lr=0.2,
        p=1.0,
        gamma=0.5,
        damping=1e-2,
        momentum=0.0,
        update_interval=3,
        precond_warmup=2,
        cayley="exact",
        exp="exact",
        max_step_norm=0.5,
        tie_tol=1e-6,
    ),
    "graft-adam-clip-diag-sides": dict(
        lr=0.05,
        precond_lr=0.25,
        p=3.0,
        damping=1e-4,
        momentum=0.3,
        weight_decay=0.1,
        update_interval=2,
        precond_warmup=2,
        reorth_interval=3,
        cayley="neumann",
        cayley_terms=2,
        graft="adam",
        max_update_rms=0.5,  # binds on some, not all, of the updates
        graft_betas=(0.8, 0.95),
        graft_eps=1e-6,
        max_precond_dim=10,  # a 6 × 15 or 3 × 18 weight: diagonal column side
    ),
    # corrected eigenvalues (math §4.10) with p ≠ 2 (the p2 step scale reads V) and a
    # diagonal side (V still per entry). Exact Cayley: the engine measures the p = 2 size in
    # the rotated frame, which equals the reference's parameter-frame norm only while B is
    # orthogonal (the quadratic map's drift moves it by ~1e-5 relative).
    "corrected-eigenvalues-p3-diag-side": dict(
        eigenvalues="corrected",
        cayley="exact",
        lr=0.02,
        precond_lr=0.2,
        p=3.0,
        damping=1e-4,
        momentum=0.9,
        weight_decay=0.01,
        update_interval=2,
        precond_warmup=3,
        reorth_interval=2,
        max_precond_dim=10,
    ),
}
