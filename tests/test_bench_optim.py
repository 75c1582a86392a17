"""Smoke tests of the optimizer step-time benchmark (``spectral-curv bench optim``).

A tiny model and a few steps: the structure of the results is checked, never a timing.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from spectral_curv.bench import reference, report, step  # noqa: E402
from spectral_curv.bench import step_report as rep  # noqa: E402
from spectral_curv.bench.__main__ import main as bench_main  # noqa: E402

HAS_MUON = hasattr(torch.optim, "Muon")  # torch >= 2.9
TINY = dict(
    width=16,
    depth=1,
    vocab=32,
    seq=8,
    tokens=16,
    steps=3,
    warmup=1,
    min_steps=2,
    intervals=(1, 2),
    powers=(2.0, 1.0),
    power_intervals=(),
    batches=2,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: tiny ops with 2+ threads stall on a shared, busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(one_thread):
    return step.run(step.Config(**TINY))


def test_every_optimizer_present(data):
    keys = [r["key"] for r in data["results"]]
    assert keys == [s.key for s in step.optimizer_specs(step.Config(**TINY))]
    assert keys[0] == "adamw" and "muon_fp32" in keys
    assert ("muon_bf16" in keys) == HAS_MUON
    assert {
        "spectral_T1_p2",
        "spectral_T1_p1",
        "spectral_T2_p2",
        "spectral_T2_p1",
        "eigh_T1",
        "eigh_T2",
    } <= set(keys)
    assert any("eigh refresh (Shampoo-style reference)" in r["label"] for r in data["results"])
    # by default the second power is timed at T = 2 only
    default = [s.key for s in step.optimizer_specs(step.Config(intervals=(1, 2, 10)))]
    assert [k for k in default if k.startswith("spectral")] == [
        "spectral_T1_p2",
        "spectral_T2_p2",
        "spectral_T2_p1",
        "spectral_T10_p2",
    ]
    assert any("bf16" in r["label"] for r in data["results"]) == HAS_MUON
    assert any("fp32" in r["label"] for r in data["results"])


def test_result_structure(data):
    cfg = data["config"]
    assert cfg["batch"] * cfg["seq"] == TINY["tokens"] and cfg["n_params"] > 0
    for r in data["results"]:
        assert r["steps_taken"] == TINY["warmup"] + TINY["steps"]
        assert len(r["whole_times_s"]) == len(r["opt_times_s"]) == TINY["steps"]
        for part in ("whole", "opt"):
            s = r[part]
            assert s["n"] == TINY["steps"]
            assert s["amortized_s"] > 0 and s["median_s"] > 0
        assert all(w >= o > 0 for w, o in zip(r["whole_times_s"], r["opt_times_s"]))
        for k in ("ratio_whole", "ratio_opt", "ratio_state"):
            assert r[k] > 0
        assert r["state_bytes"] > 0
        assert r["final_loss"] == pytest.approx(r["final_loss"])  # finite, not NaN
        if r["family"] in ("spectral", "eigh"):
            assert len(r["phases"]) == TINY["steps"]
            assert set(r["phases"]) <= set(r["weights"])
            assert sum(r["weights"].values()) == pytest.approx(1.0)
    adamw = next(r for r in data["results"] if r["key"] == "adamw")
    assert adamw["ratio_whole"] == adamw["ratio_opt"] == 1.0
    m = data["machine"]
    assert m["cpu_count"] >= 1 and m["torch"] == torch.__version__ and m["torch_threads"] >= 1
    assert len(m["probe_s"]) == TINY["warmup"] + TINY["steps"]
    json.dumps(data)  # serialisable


def test_spectral_schedule_matches_optimizer(data):
    """The refresh schedule assumed for the phase split is the optimizer's own."""
    for r in data["results"]:
        if r["family"] == "spectral":
            assert r["refreshes_counted"] == r["refreshes_expected"]
            assert r["skipped_steps"] == 0 and r["rejected_refreshes"] == 0


def test_lane_budget_stops_after_every_step_kind():
    cfg = step.Config(
        **{**TINY, "steps": 30, "min_steps": 2, "lane_budget_s": 1e-9, "intervals": (2,)}
    )
    out = step.run(cfg, keys=["spectral_T2_p2"])
    by = {r["key"]: r for r in out["results"]}
    assert set(by) == {"adamw", "spectral_T2_p2"}
    assert by["adamw"]["opt"]["n"] == 2  # no schedule: min_steps, then the budget stops it
    spec = by["spectral_T2_p2"]
    # precond_warmup = 10: steps 1..10 refresh; plain steps are the odd k from 11 on
    assert spec["phases"].count("plain") == 2 and spec["opt"]["n"] < 30
    assert spec["opt"]["amortized_s"] > 0 and "unsampled_phases" not in spec["opt"]
    with pytest.raises(ValueError, match="unknown optimizer"):
        step.run(cfg, keys=["nope"])


def test_schedule_and_summary():
    phase, w = step.schedule(2, precond_warmup=3, reorth_interval=2)
    # refresh on k = 0, 1, 2 (warm-up), then every even k; every 2nd refresh reorthogonalises
    assert [phase(k) for k in range(8)] == [
        "refresh",
        "reorth",
        "refresh",
        "plain",
        "reorth",
        "plain",
        "refresh",
        "plain",
    ]
    assert w == pytest.approx({"plain": 0.5, "refresh": 0.25, "reorth": 0.25})
    s = step.summarize(
        [1.0, 3.0, 1.0, 3.0],
        ["plain", "refresh", "plain", "refresh"],
        {"plain": 0.9, "refresh": 0.1},
    )
    assert s["amortized_s"] == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    assert s["median_s"] == 2.0 and s["phase_n"] == {"plain": 2, "refresh": 2}
    # an unsampled reorth phase counts as a refresh
    s = step.summarize(
        [1.0, 3.0], ["plain", "refresh"], {"plain": 0.5, "refresh": 0.25, "reorth": 0.25}
    )
    assert s["amortized_s"] == pytest.approx(0.5 + 0.5 * 3.0)


def test_reference_optimizers():
    g = torch.randn(12, 8)
    x = reference.newton_schulz5(g)
    assert x.dtype == torch.float32 and x.shape == g.shape
    sv = torch.linalg.svdvals(x)
    assert bool(((sv > 0.3) & (sv < 1.5)).all())
    # The eigh reference's first step (β = 0, no momentum) is (GGᵀ)^{-1/4} G (GᵀG)^{-1/4}
    # restricted to G's range, i.e. the polar factor of G at p = 2.
    w = torch.nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
    w.grad = torch.randn(6, 4, dtype=torch.float64)
    opt = reference.EighRefresh([w], lr=1.0, beta=0.0, momentum=0.0)
    opt.step()
    u, _, vh = torch.linalg.svd(w.grad, full_matrices=False)
    torch.testing.assert_close(-w.detach(), u @ vh, atol=1e-4, rtol=0)


@pytest.mark.skipif(not HAS_MUON, reason="torch.optim.Muon needs torch >= 2.9")
def test_muon_fp32_copy_matches_torch_muon():
    """MuonFP32's step is torch.optim.Muon's step up to bf16 rounding of the NS iterations."""
    torch.manual_seed(0)
    g = torch.randn(8, 6)
    w0 = torch.randn(8, 6)
    ws = [torch.nn.Parameter(w0.clone()) for _ in range(2)]
    for w in ws:
        w.grad = g.clone()
    ours, ref = reference.MuonFP32([ws[0]], lr=0.1), torch.optim.Muon([ws[1]], lr=0.1)
    for _ in range(2):
        ours.step()
        ref.step()
    d_ours, d_ref = ws[0].detach() - w0, ws[1].detach() - w0
    assert float((d_ours - d_ref).norm() / d_ref.norm()) < 0.03


def test_report_markdown_plot(data, tmp_path):
    text = rep.table(data)
    for label in (
        "AdamW",
        "Muon (fp32 NS",
        "SpectralKron T=1 p=2",
        "eigh refresh (Shampoo-style reference) T=2",
    ):
        assert label in text
    assert ("Muon (torch.optim.Muon, bf16 NS)" in text) == HAS_MUON
    md = tmp_path / "b.md"
    md.write_text("# Optimizer step-time benchmark\n\nhand-written notes\n")
    sec = rep.markdown_section(data, plot_path="img/o.png", json_path="b.json")
    report.write_markdown(md, sec)
    report.write_markdown(md, sec)  # idempotent: replaces its own section
    out = md.read_text()
    assert out.count("optim-bench:begin") == 1 and "hand-written notes" in out
    assert "img/o.png" in out and "b.json" in out and "python -m spectral_curv.bench optim" in out
    pytest.importorskip("matplotlib")
    png = tmp_path / "o.png"
    rep.plot(data, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_quick_smoke(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = bench_main(
        [
            "optim",
            "--quick",
            "--width",
            "16",
            "--vocab",
            "32",
            "--tokens",
            "16",
            "--steps",
            "2",
            "--intervals",
            "2",
            "--powers",
            "2",
            "--quiet",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert out.startswith("bench optim (quick): ") and "threads: torch 1" in out.splitlines()[0]
    assert "SpectralKron T=2 p=2" in out and "Muon (fp32 NS" in out
    assert "zero_grad + forward + loss + backward + opt.step()" in out  # the legend
    folder = tmp_path / report.DEFAULT_OUT  # the default output folder, in the cwd
    payload = json.loads((folder / "optim_quick.json").read_text())
    assert {r["key"] for r in payload["results"]} == {
        "adamw",
        "muon_fp32",
        "spectral_T2_p2",
        "eigh_T2",
    } | ({"muon_bf16"} if HAS_MUON else set())
    assert "(quick run)" in (folder / "optim_quick.md").read_text()
    assert (folder / "optim_quick.png").exists()
    assert not (tmp_path / "docs").exists()
