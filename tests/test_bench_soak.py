"""``python -m spectral_curv.bench soak``: the stability soak runs end to end (tiny sizes) and
its summary applies the acceptance rules it documents."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spectral_curv.bench import soak
from spectral_curv.bench.__main__ import build_parser

pytest.importorskip("torch")
pytest.importorskip("sklearn")


@pytest.mark.slow
def test_soak_cli_tiny_run_writes_report(tmp_path, capsys):
    md, js = tmp_path / "soak.md", tmp_path / "soak.json"
    args = build_parser().parse_args(
        ["soak", "--steps", "30", "--seeds", "2", "--modes", "default", "exact",
         "--record-every", "10", "--long-steps", "200", "--out", str(tmp_path)]
    )  # fmt: skip
    assert soak.main(args) == 0
    data = json.loads(js.read_text())
    assert [r["task"] for r in data["rows"]] == ["teacher"] * 4 + ["digits"] * 4
    assert [r["mode"] for r in data["rows"]] == ["default", "default", "exact", "exact"] * 2
    for row in data["rows"]:
        s = row["summary"]
        assert s["finite"] == 2 and math.isfinite(s["final_min"]) and s["max_drift"] < 0.2
        assert len(row["runs"][0]["drift"]) == 3  # every 10 of 30 steps
    assert data["drift"]["steps"] == 200 and len(data["drift"]["curve"]) == 20
    from spectral_curv import optim

    assert data["drift"]["reorth_interval"] == optim.Options().reorth_interval  # the default
    text = md.read_text()
    assert soak.BEGIN in text and soak.END in text and "| teacher | exact | f32 |" in text
    assert "default" in capsys.readouterr().out


def test_summary_rules():
    runs = [
        {"final_loss": 0.1, "finite": True, "max_drift": 1e-3, "rejected": 0},
        {"final_loss": 0.25, "finite": True, "max_drift": 2e-3, "rejected": 1},
    ]
    s = soak._summary(runs)
    assert s["within_2x"] is False and s["max_drift"] == 2e-3 and s["rejected"] == 1
    runs[1]["final_loss"] = 0.19
    assert soak._summary(runs)["within_2x"] is True
    runs[1].update(final_loss=float("nan"), finite=False)
    s = soak._summary(runs)
    assert s["finite"] == 1 and s["within_2x"] is False and s["max_drift"] == 1e-3


def test_teacher_task_is_a_stream_with_a_fixed_teacher():
    """The non-memorising task: distinct samples per seed, labels from one teacher."""
    x0, y0 = soak._teacher_data(512, 0)
    x1, y1 = soak._teacher_data(512, 1)
    again = soak._teacher_data(512, 0)
    assert np.array_equal(x0, again[0]) and np.array_equal(y0, again[1])
    assert not np.allclose(x0, x1)
    assert len(np.unique(x0, axis=0)) == 512 and 5 <= len(np.unique(y0)) <= 10
    # one teacher for every seed
    assert np.array_equal(y1, soak._teacher_labels(x1.astype(np.float64)))
    with pytest.raises(ValueError, match="task"):
        soak.mlp_soak(steps=1, seed=0, precond_dtype="f32", options={}, task="mnist")
