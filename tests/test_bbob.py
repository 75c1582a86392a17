"""The BBOB runner (``spectral_curv.bench.bbob``) on a tiny problem (skips without cocoex)."""

from __future__ import annotations

import pytest

pytest.importorskip("cocoex")

from spectral_curv.bench import bbob


def test_spectral_nes_solves_bbob_sphere_and_table():
    res = bbob.run([1], dim=2, instances=[1, 2], methods=("spectral", "xnes"), budget_per_dim=500)
    runs = res["runs"]
    assert set(runs) == {"bbob_f001_i01_d02", "bbob_f001_i02_d02"}
    for r in runs.values():
        assert r["spectral"]["hit"] and 0 < r["spectral"]["evals"] <= 1000
    text = bbob.table(res)
    assert "f001" in text and "(2/2)" in text
    assert (
        bbob.main(
            [
                "--dim",
                "2",
                "--functions",
                "1",
                "--instances",
                "1",
                "--budget-per-dim",
                "300",
                "--methods",
                "spectral",
            ]
        )
        == 0
    )


def test_ipop_methods_on_rastrigin():
    """IPOP restarts (``nes.fmin`` / ``cma.fmin2``) on BBOB f15 (Rastrigin) in 2-D."""
    methods = ["spectral-ipop"]
    try:
        import cma  # noqa: F401

        methods.append("cma-ipop")
    except ImportError:
        pass
    res = bbob.run([15], dim=2, instances=[1], methods=methods, budget_per_dim=20000)
    assert res["setup"]["restarts"] == 9 and res["setup"]["lr_sigma"] == 0.3
    for m in methods:
        r = res["runs"]["bbob_f015_i01_d02"][m]
        assert r["hit"] and r["evals"] <= 40000, (m, r)


def test_ipop_path_passes_the_spectral_rules(monkeypatch):
    """``--rank-one`` and ``--sigma-rule`` reach ``nes.fmin`` on the IPOP path too."""
    from spectral_curv import nes

    seen: list[dict] = []

    def fake_fmin(objective, x0, sigma0, **kw):
        seen.append(kw)

    monkeypatch.setattr(nes, "fmin", fake_fmin)
    bbob.run(
        [1],
        dim=2,
        instances=[1],
        methods=("spectral-ipop",),
        budget_per_dim=10,
        sigma_rule="csa",
        rank_one=False,
    )
    bbob.run([1], dim=2, instances=[1], methods=("spectral-ipop",), budget_per_dim=10)
    assert seen[0]["rank_one"] is False and seen[0]["sigma_rule"] == "csa"
    assert "rank_one" not in seen[1]
