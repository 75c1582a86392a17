"""Acceptance of the paper's Fig. 2 / 7 / 8 curvature-matching experiments (math §6).

Set-up (``spectral_curv.experiments.matching``): ``Σ`` = Haar ``Q`` × log-uniform spectrum
on [0.01, 1]; one sequence ``g_k ~ N(0, Σ)`` for every scheme; γ = 1, β₂ = 1e-3, 10⁴ steps;
the spectral schemes use the exact exp and Cayley maps. Numbers measured at seed 0 (seeds
1, 2 agree to a few per cent) are quoted next to each criterion.

Criteria and why:

* Full matrix, fixed point — the *final* iterate (k = 10⁴): ``|e_sp − e_def| ≤ 0.10 e_def``
  (two-sided: "matches", not merely "no worse"), and the same for the mean over the last
  10 % of the run, which averages out the EMA's sampling noise. Measured 0.1505 vs 0.1541.
* Full matrix, iterate matching — the paper's Fig. 7 shows the error against the default
  iterates at every iteration. From the isotropic start (every eigenvalue tied) the
  spectral scheme has a transient bump (max 0.226 near k ≈ 400: near-ties make
  ``U_ij = −Q_ij/(d_i − d_j)`` huge, Cayley arguments reach ~10⁴, and the first-order
  rotation is not the default scheme's eigenvector update there), then it decays to 0.06.
  So: ``≤ 0.15`` at the end (final and last-10 % mean) from the isotropic start, ``≤ 0.15``
  at *every* recorded iterate from a tie-free (random SPD) start (max 0.075), and the
  isotropic-start transient is pinned below 0.3 as a characterisation, not as the target.
* Kronecker 9×11 — "within 2 % of the error of the best Kronecker approximation": the
  spectral scheme's noise-free fixed point is the KL (flip-flop) Kronecker approximation,
  not the Frobenius-nearest ``VLP(Σ)``. For the paper-like random ``Σ`` both are close to a
  multiple of ``I``, and ``e_sp ≤ 1.02 e_VLP`` holds (0.7517 vs 0.7510) — but so would the
  isotropic ``(tr Σ/n) I`` (0.7573), so that check is weak. For a structured ``Σ``
  (Kronecker + 30 % dense part) the 2 % target against ``VLP(Σ)`` does *not* hold
  (0.521 vs 0.158): the scheme lands on its KL fixed point (0.520) within 0.3 %, exactly
  like the Kronecker Cholesky baseline, while the projection baseline reaches 0.163. Both
  facts are asserted below.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import BACKENDS
from spectral_curv.experiments import matching

pytestmark = pytest.mark.skipif("numpy" not in BACKENDS, reason="numpy-only experiment")


def test_results_are_json_serialisable_and_small_runs_work():
    """Fast: both experiments on tiny problems return strict-JSON dicts with matching lengths."""
    full_res = matching.full_matching(n=6, steps=60, record_every=20, log_points=5)
    kron_res = matching.kron_matching(rows=2, cols=3, steps=60, record_every=20, log_points=5)
    kron_s = matching.kron_matching(
        rows=2, cols=3, steps=30, sigma_kind="kron_plus_random", record_every=10, log_points=0
    )
    for res in (full_res, kron_res, kron_s):
        json.loads(json.dumps(res, allow_nan=False))
        n_rec = len(res["iterations"])
        assert res["iterations"][0] == 0 and res["iterations"][-1] == res["config"]["steps"]
        for curves in (res["fixed_point"], res["iterate"]):
            assert all(len(v) == n_rec for v in curves.values())
    assert kron_res["references"]["vlp"] <= kron_res["references"]["kl"] + 1e-12
    with pytest.raises(ValueError):
        matching.full_matching(n=4, steps=2, init="nope")
    with pytest.raises(ValueError):
        matching.kron_matching(rows=2, cols=2, steps=2, sigma_kind="nope")


def _final(res: dict[str, Any], kind: str, name: str) -> float:
    return res["summary"][kind][name]["final"]


def _tail(res: dict[str, Any], kind: str, name: str) -> float:
    return res["summary"][kind][name]["tail_mean"]


# ------------------------------------------------------------------------ full matrix


@pytest.fixture(scope="module")
def full_iso() -> dict[str, Any]:
    return matching.full_matching(n=100, beta2=1e-3, steps=10_000, seed=0)


@pytest.fixture(scope="module")
def full_random_start() -> dict[str, Any]:
    return matching.full_matching(n=100, beta2=1e-3, steps=10_000, seed=0, init="random")


@pytest.mark.slow
def test_full_fixed_point_matches_default(full_iso):
    for stat in (_final, _tail):
        e_sp = stat(full_iso, "fixed_point", "spectral")
        e_def = stat(full_iso, "fixed_point", "default")
        assert abs(e_sp - e_def) <= 0.10 * e_def, (e_sp, e_def)
    # The default scheme sits at its predicted EMA noise floor (sanity of the set-up).
    floor = full_iso["noise_floor"]
    assert abs(_tail(full_iso, "fixed_point", "default") - floor) <= 0.15 * floor
    # The Cholesky baseline converges too (measured 0.164).
    assert _final(full_iso, "fixed_point", "cholesky") <= 1.2 * _final(
        full_iso, "fixed_point", "default"
    )


@pytest.mark.slow
def test_full_iterate_matching_at_the_end(full_iso):
    assert _final(full_iso, "iterate", "spectral") <= 0.15
    assert _tail(full_iso, "iterate", "spectral") <= 0.15
    assert full_iso["iterations"][-1] == 10_000


@pytest.mark.slow
def test_full_isotropic_start_transient(full_iso):
    """Characterisation of the tie transient (module docstring), not the acceptance target."""
    assert full_iso["summary"]["iterate"]["spectral"]["max"] <= 0.3
    diag = full_iso["diagnostics"]
    assert diag["max_cayley_arg_norm"] > 1.0  # near-ties do produce huge U_ij
    assert diag["orthogonality_error"] < 1e-9  # exact Cayley keeps B orthogonal anyway


@pytest.mark.slow
def test_full_tie_free_start_matches_at_every_iterate(full_random_start):
    res = full_random_start
    assert max(res["iterate"]["spectral"]) <= 0.15
    e_sp = _final(res, "fixed_point", "spectral")
    e_def = _final(res, "fixed_point", "default")
    assert abs(e_sp - e_def) <= 0.10 * e_def, (e_sp, e_def)


# -------------------------------------------------------------------------- Kronecker


@pytest.fixture(scope="module")
def kron_random() -> dict[str, Any]:
    return matching.kron_matching(rows=9, cols=11, beta2=1e-3, steps=10_000, seed=0)


@pytest.fixture(scope="module")
def kron_structured() -> dict[str, Any]:
    return matching.kron_matching(
        rows=9,
        cols=11,
        beta2=1e-3,
        steps=10_000,
        seed=0,
        sigma_kind="kron_plus_random",
        rho=0.3,
    )


@pytest.mark.slow
def test_kron_fixed_point_within_2pct_of_best_kron(kron_random):
    res = kron_random
    e_sp = _final(res, "fixed_point", "spectral")
    e_vlp = res["references"]["vlp"]
    assert e_vlp * (1 - 1e-9) <= e_sp <= 1.02 * e_vlp, (e_sp, e_vlp)
    # ... and within 2 % of the impractical projection run on the same gradients.
    e_pr = _final(res, "fixed_point", "projection")
    assert abs(e_sp - e_pr) <= 0.02 * e_pr
    # It learned more than the scale (the isotropic S is 0.757; a weak margin, see above).
    assert e_sp < res["references"]["isotropic"]
    # Iterate matching: all Kronecker schemes sit at the structural gap (Fig. 8).
    lower = res["iterate_lower_bound"][-1]
    for name in ("spectral", "projection", "cholesky"):
        e = _final(res, "iterate", name)
        assert lower * (1 - 1e-9) <= e <= 1.02 * lower, (name, e, lower)


@pytest.mark.slow
def test_kron_structured_reaches_its_kl_fixed_point(kron_structured):
    res = kron_structured
    refs = res["references"]
    e_sp = _final(res, "fixed_point", "spectral")
    assert abs(e_sp - refs["kl"]) <= 0.02 * refs["kl"], (e_sp, refs["kl"])
    e_ch = _final(res, "fixed_point", "cholesky")  # same fixed point, other parametrisation
    assert abs(e_sp - e_ch) <= 0.02 * e_ch
    assert e_sp <= 0.6 * refs["isotropic"]  # it learns the structure (0.52 vs 0.91)
    it_sp, it_ch = _final(res, "iterate", "spectral"), _final(res, "iterate", "cholesky")
    assert abs(it_sp - it_ch) <= 0.02 * it_ch


@pytest.mark.slow
def test_kron_structured_kl_vs_frobenius_gap(kron_structured):
    """Why "within 2 % of VLP(Σ)" is not met for a structured Σ: KL ≠ Frobenius projection."""
    res = kron_structured
    refs = res["references"]
    assert refs["kl"] >= 1.5 * refs["vlp"]  # 0.520 vs 0.158 (seeds 1, 2: ×1.6, ×2.1)
    e_pr = _final(res, "fixed_point", "projection")
    assert refs["vlp"] <= e_pr <= 1.10 * refs["vlp"]  # projection: VLP(Σ) + sampling noise
    assert _final(res, "fixed_point", "spectral") > 1.02 * refs["vlp"]
