"""``bench device`` (the GPU benchmark) as a CPU dry run: ``--device cpu --tiny``.

- it exits 0 and writes ``gpu.md`` + ``gpu.json`` with every section (precond, batched,
  whole step, CuPy vs torch, targets); ``--no-write`` writes nothing;
- what is timed is SpectralKron's refresh step: the recorded direction of every timed
  refresh equals ``optim.direction(optim.refresh(...))`` on the same inputs;
- an error in one measurement (an out-of-memory) is recorded and the rest still run; past
  ``--budget-s`` every measurement is ``skipped (budget)``; without a GPU and no
  ``--device`` it stops with a message that names the dry run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

from spectral_curv import optim
from spectral_curv.bench import device
from spectral_curv.bench.__main__ import main as bench_main

TINY = ["device", "--device", "cpu", "--tiny", "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("gpu")
    assert bench_main([*TINY, "--out", str(out)]) == 0
    data = json.loads((out / "gpu.json").read_text())
    return out, data, (out / "gpu.md").read_text()


# the whole dry run (every section, ~7 s, shared by the two tests below): `slow`; the quick run
# keeps the one-section runs further down
@pytest.mark.slow
def test_tiny_run_writes_every_section(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    out, data, md = tiny_run
    assert sorted(p.name for p in out.iterdir()) == ["gpu.json", "gpu.md"]
    assert set(data) == {"machine", "config", "sections", "targets"}
    assert set(data["sections"]) == set(device.SECTIONS)
    assert data["config"]["tiny"] and data["config"]["device"] == "cpu"
    for name in device.SECTIONS:
        sec = data["sections"][name]
        assert sec["rows"], name
        for row in sec["rows"]:
            assert not str(row["status"]).startswith(("error", "skipped (budget)")), (name, row)
    pre = data["sections"]["precond"]["rows"]
    methods = {(r["method"], r["dtype"]) for r in pre}
    assert methods == {
        ("matmul", "bfloat16"),
        ("matmul", "float32"),
        ("spectral_refresh", "bfloat16"),
        ("spectral_refresh", "float32"),
        ("spectral_plain", "bfloat16"),
        ("spectral_plain", "float32"),
        ("eigh_refresh", "float32"),
        ("muon_ns5", "bfloat16"),
        ("muon_ns5", "float32"),
    }
    for r in pre:  # matmul-equivalents: ÷ the same-dtype matmul of the same run
        assert r["matmul_eq"] > 0 and len(r["times_s"]) == r["repeats"] >= 2
    steps = {r["key"]: r for r in data["sections"]["step"]["rows"]}
    assert {"adamw", "spectral_T1", "spectral_T2", "spectral_T10"} <= set(steps)
    assert steps["adamw"]["vs_adamw"] == pytest.approx(1.0)
    assert np.isfinite(steps["spectral_T2"]["final_loss"])
    cupy = data["sections"]["cupy"]["rows"]
    assert all(r["agrees"] for r in cupy if "agrees" in r) and any("agrees" in r for r in cupy)
    assert [t["key"] for t in data["targets"]] == [
        "refresh_vs_eigh",
        "refresh_vs_muon",
        "step_vs_adamw",
    ]
    assert all(t["verdict"] in ("PASS", "FAIL") and t["checks"] for t in data["targets"])
    for head in (
        "## Targets",
        "## Preconditioner refresh + step, per layer",
        "## Stacked same-shape layers",
        "## Whole training step",
        "## CuPy backend vs torch",
    ):
        assert head in md
    assert md.count(device.BEGIN) == md.count(device.END) == 1
    assert "Dry run at tiny sizes" in md


@pytest.mark.slow
def test_timed_refresh_step_is_spectral_kron_refresh(
    tiny_run: tuple[Path, dict[str, Any], str],
) -> None:
    """The direction recorded for every timed refresh (per layer and stacked, bf16 and
    fp32) is ``optim.direction(optim.refresh(state, G))`` with the default options."""
    _, data, _ = tiny_run
    o = optim.Options()
    rows = [
        r
        for name in ("precond", "batched")
        for r in data["sections"][name]["rows"]
        if r["method"] == "spectral_refresh"
    ]
    assert len(rows) == 8
    for r in rows:
        batch = (r["batch"],) if r["batch"] else ()
        x = device.make_inputs(r["rows"], r["cols"], batch=batch, dtype=r["dtype"], seed=r["seed"])
        new, ok = optim.refresh(x["state"], x["G"], **o.refresh_kwargs())
        u = optim.direction(new, x["G"], p=o.p, norm_p=2.0)
        assert bool(ok.all())
        want = device._checksum(u)
        assert r["check"]["finite"] and want["finite"]
        np.testing.assert_allclose(r["check"]["fro"], want["fro"], rtol=1e-6)
        np.testing.assert_allclose(r["check"]["sum"], want["sum"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["check"]["head"], want["head"], rtol=1e-6, atol=1e-7)


def test_no_write_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "nothing"
    args = [*TINY, "--no-write", "--out", str(out), "--sections", "precond"]
    assert bench_main(args) == 0
    assert not out.exists()


def test_an_error_is_recorded_and_the_rest_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def oom(g: Any) -> Any:
        raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")

    monkeypatch.setattr(device, "newton_schulz5", oom)
    assert bench_main([*TINY, "--out", str(tmp_path), "--sections", "precond"]) == 0
    data = json.loads((tmp_path / "gpu.json").read_text())
    rows = data["sections"]["precond"]["rows"]
    bad = [r for r in rows if r["status"] != "ok"]
    assert bad and all(r["method"] == "muon_ns5" and r["dtype"] == "float32" for r in bad)
    assert all("CUDA out of memory" in r["status"] for r in bad)
    assert len(bad) == len(data["config"]["shapes"])
    assert "error: RuntimeError: CUDA out of memory" in (tmp_path / "gpu.md").read_text()
    assert data["sections"]["step"]["status"] == "skipped (not asked for)"


def test_budget_skips_the_rest(tmp_path: Path) -> None:
    assert bench_main([*TINY, "--out", str(tmp_path), "--budget-s", "0"]) == 0
    data = json.loads((tmp_path / "gpu.json").read_text())
    for sec in data["sections"].values():
        assert sec["status"] == "skipped (budget)" and not sec["rows"]
    assert all(t["verdict"] == "n/a" for t in data["targets"])
    assert "skipped (budget)" in (tmp_path / "gpu.md").read_text()


def test_budget_mid_run_marks_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget that runs out inside a section marks the remaining rows, keeps the rest."""
    calls = {"n": 0}
    real = device._Context.over

    def over(self: Any) -> bool:
        calls["n"] += 1
        return calls["n"] > 4 or real(self)

    monkeypatch.setattr(device._Context, "over", over)
    assert bench_main([*TINY, "--out", str(tmp_path), "--sections", "precond"]) == 0
    rows = json.loads((tmp_path / "gpu.json").read_text())["sections"]["precond"]["rows"]
    status = [r["status"] for r in rows]
    assert "ok" in status and "skipped (budget)" in status


def test_no_gpu_without_device_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_main(["device", "--no-write"]) == 2
    assert "--device cpu --tiny" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="full GPU runs only"):
        bench_main([*TINY, "--write-docs"])
