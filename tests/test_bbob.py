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
