"""``spectral-curv reproduce``: the quick versions run end to end and write JSON and PNGs."""

from __future__ import annotations

import json

import pytest

from spectral_curv import reproduce
from spectral_curv.cli import main as cli_main


def test_quick_reproduce_writes_json_plots_and_summary(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    img = tmp_path / "res"
    js = img / "reproduction_quick.json"
    rc = cli_main(["reproduce", "fig2", "fig7", "fig8", "fig3", "--quick", "--out", str(img)])
    assert rc == 0
    captured = capsys.readouterr()
    out = captured.out
    assert out.startswith("reproduce (quick): fig2, fig7, fig8, fig3")
    assert "the error at the last iteration" in out and "last-10% mean  mean of the" in out
    for fig in ("fig2", "fig7", "fig8", "fig3"):
        assert fig in out
        assert (img / f"repro_{fig}_quick.png").read_bytes()[:4] == b"\x89PNG"
        # one progress line as each figure starts and one as it ends, nothing repeated
        assert sum(f"] {fig} " in line for line in captured.err.splitlines()) == 2
    data = json.loads(js.read_text())
    full = data["fig2"]["full"]
    assert set(full["fixed_point"]) == {"default", "spectral", "cholesky"}
    # the spectral scheme tracks the default one (small quick run: a loose sanity bound)
    sp, df = full["summary"]["fixed_point"]["spectral"], full["summary"]["fixed_point"]["default"]
    assert abs(sp["final"] - df["final"]) < 0.25 * df["final"]
    for name, p in data["fig3"]["problems"].items():
        its = p["iterations_to_1e-6"]
        assert its["spectral"] is not None and its["rgd_expm"] is not None, name
        assert its["spectral"] <= 1.5 * its["rgd_expm"], (name, its)
    # a second run keeps the other figures' keys
    assert cli_main(["reproduce", "fig7", "--quick", "--quiet", "--out", str(img)]) == 0
    assert {"fig2", "fig3", "fig7", "fig8"} <= set(json.loads(js.read_text()))


def test_quick_fig9_nes(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    js = tmp_path / "reproduction_quick.json"
    assert cli_main(["reproduce", "fig9", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    rows = json.loads(js.read_text())["fig9"]["rows"]
    assert {r["function"] for r in rows} == {
        "ackley",
        "rosenbrock",
        "bohachevsky",
        "schaffer",
        "griewank",
    }
    assert all(r["median_final"] is not None for r in rows)
    assert (tmp_path / "repro_fig9_quick.png").exists()
    assert "rosenbrock" in capsys.readouterr().out


def test_unknown_figure_is_rejected():
    with pytest.raises(ValueError, match="unknown figure"):
        reproduce.run(["fig42"], progress=False)
    with pytest.raises(SystemExit):
        cli_main(["reproduce", "fig42"])
