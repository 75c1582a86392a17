"""Wall-clock of one SPD spectral step: factored frame vs the former dense round trip (math §2).

:func:`spectral_curv.spd.step` (``sweeps=0``) forms ``Q = BᵀΔB = −2 Diag(d)(BᵀGB)Diag(d)`` and
calls :func:`spectral_curv.full.update_rotated` (two n×n×n matmuls before the Cayley map).
Its former implementation (kept here only, as the timing reference :func:`dense_step`) built
``S = B Diag(d) Bᵀ``, ``Δ = −2 S G S`` and then rotated ``Δ`` back with ``Bᵀ Δ B`` inside
:func:`spectral_curv.full.update` (five matmuls). Both give the same step to round-off
(``tests/test_spd.py``).

Run ``OMP_NUM_THREADS=1 python -m spectral_curv.experiments.spd_step_timing`` (numpy,
float64); :func:`time_steps` returns a JSON-able dict with the median time of each variant.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import full, spd

__all__ = ["dense_step", "time_steps"]


def dense_step(state: full.SpectralState, grad: Any, *, lr: float, **kw: Any) -> Any:
    """The former ``spd.step``: dense ``S``, ``Δ = −2 sym(S G S)``, ``full.update(Δ)`` (math §2).

    Example (the same step as ``spd.step`` to round-off)::

        >>> import numpy as np
        >>> from spectral_curv import spd
        >>> from spectral_curv.experiments.spd_step_timing import dense_step
        >>> st, g = spd.init(np.diag([1.0, 2.0, 4.0])), np.ones((3, 3))
        >>> a, b = dense_step(st, g, lr=0.1), spd.step(st, g, lr=0.1, sweeps=0)
        >>> bool(np.allclose(a.d, b.d, rtol=1e-14)), bool(np.allclose(a.B, b.B, atol=1e-14))
        (True, True)
    """
    g = 0.5 * (grad + grad.T)
    s = full.dense(state)
    t = s @ g @ s
    return full.update(state, -(t + t.T), beta2=lr, **kw)


def time_steps(
    ns: Sequence[int] = (100, 1000),
    *,
    repeats: int | None = None,
    cayley: Sequence[str] = ("exact", "quadratic"),
    seed: int = 0,
) -> dict[str, Any]:
    """Median seconds per step of ``spd.step`` (new) and :func:`dense_step` (old) (math §2).

    For each ``n``: a random SPD ``S`` (condition number 10) and symmetric ``G``; the two
    variants run interleaved (old, new, old, new, ...) after one warm-up call each;
    ``repeats`` per variant defaults to ``max(5, 2000 // n)``. Returns
    ``{"rows": [{"n", "cayley", "old_s", "new_s", "speedup"}, ...], "threads": ...}``.

    Example::

        >>> from spectral_curv.experiments.spd_step_timing import time_steps
        >>> res = time_steps([20], repeats=3, cayley=["exact"])
        >>> row = res["rows"][0]
        >>> row["n"], row["cayley"], row["old_s"] > 0, row["new_s"] > 0
        (20, 'exact', True, True)
    """
    import os

    rng = np.random.default_rng(seed)
    rows = []
    for n in ns:
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        s0 = (q * np.geomspace(1.0, 10.0, n)) @ q.T
        a = rng.standard_normal((n, n))
        g = 0.5 * (a + a.T) / n
        st = spd.init(0.5 * (s0 + s0.T))
        reps = max(5, 2000 // n) if repeats is None else repeats
        for mode in cayley:
            fns = {
                "old": lambda c=mode, s=st, m=g: dense_step(s, m, lr=0.1, cayley=c),
                "new": lambda c=mode, s=st, m=g: spd.step(s, m, lr=0.1, cayley=c, sweeps=0),
            }
            times: dict[str, list[float]] = {"old": [], "new": []}
            for f in fns.values():
                f()  # warm-up
            for _ in range(reps):
                for name, f in fns.items():
                    t0 = time.perf_counter()
                    f()
                    times[name].append(time.perf_counter() - t0)
            old, new = (float(np.median(times[k])) for k in ("old", "new"))
            rows.append({"n": n, "cayley": mode, "old_s": old, "new_s": new, "speedup": old / new})
    return {"rows": rows, "threads": os.environ.get("OMP_NUM_THREADS"), "repeats": repeats}


if __name__ == "__main__":  # pragma: no cover
    import json

    res = time_steps()
    for r in res["rows"]:
        print(
            f"n={r['n']:5d} cayley={r['cayley']:9s} old {r['old_s'] * 1e3:9.3f} ms  "
            f"new {r['new_s'] * 1e3:9.3f} ms  speed-up {r['speedup']:.2f}x"
        )
    print(json.dumps(res))
