"""Smoke tests of the preconditioner-cost benchmark (``spectral-curv bench precond``).

Tiny sizes, one round: the structure of the output is checked, never a timing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from spectral_curv import kron
from spectral_curv.bench import precond, reference, report
from spectral_curv.bench import precond_report as rep
from spectral_curv.bench.__main__ import main as bench_main


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def data():
    return precond.run([16, 32], repeats=1, budget_s=None)


def test_run_structure(data):
    cfg = data["config"]
    assert cfg["sizes"] == [16, 32]
    assert cfg["dtype"] == "float32"
    assert set(cfg["backends"]) == set(precond.available_backends())
    res = data["results"]
    for b in cfg["backends"]:
        for n in (16, 32):
            got = {r["method"] for r in res if r["backend"] == b and r["n"] == n}
            assert got == set(precond.methods_for(b))
    assert {
        "spectral_quadratic",
        "spectral_neumann",
        "spectral_exact",
        "eigh_refresh",
        "muon_ns5",
    } <= set(precond.methods_for("numpy"))
    for r in res:
        assert r["median_s"] > 0 and r["matmul_median_s"] > 0
        for k in ("ratio", "ratio_of_medians", "ratio_min"):
            assert r[k] > 0 and np.isfinite(r[k])
        assert r["ratio_of_medians"] == pytest.approx(r["median_s"] / r["matmul_median_s"])
        # one round: a matmul sample before the first call and after every call
        assert len(r["times_s"]) == 1
        assert len(r["matmul_times_s"]) == 1 + len(precond.methods_for(r["backend"]))
        assert r["extra"]["rounds"] == 1 and r["extra"]["page_faults"] >= 0
        assert r["products"] == precond.analytic(r["method"])["products"]
    m = data["machine"]
    assert m["cpu_count"] >= 1 and m["numpy"] == np.__version__
    json.dumps(data)  # serialisable


def test_analytic_counts():
    # A refresh step as the optimizers run it, optim.refresh_and_direction: R 2 + W 2 + per
    # factor the Cayley products + the step 2 (corrected eigenvalues: the lagged step shares
    # R); with the Kronecker eigenvalues the step forms R again (+2).
    a = precond.analytic("spectral_neumann", terms=1)  # per factor X², P·X², B·P
    assert a["products"] == 12 and a["syrk"] == 4
    assert precond.flop_eq("spectral_neumann", "numpy") == 10.0
    # torch: the spectral routes' blocked gram at 9/16 of a product (three levels at n = 1024)
    assert precond.flop_eq("spectral_neumann", "torch") == 12.0 - 4 * 7 / 16
    # K = 0: X², B·P; K = 2: X², 2 P·Y, 1 squaring, B·P.
    assert precond.analytic("spectral_neumann", terms=0)["products"] == 6 + 2 * 2
    assert precond.analytic("spectral_neumann", terms=2)["products"] == 6 + 2 * 5
    # quadratic Cayley: per factor X², B·Q: 10 products, 4 of them syrk-able.
    q = precond.analytic("spectral_quadratic")
    assert q["products"] == 10 and q["syrk"] == 4
    assert precond.flop_eq("spectral_quadratic", "numpy") == 8.0
    assert precond.flop_eq("spectral_quadratic", "torch") == 10.0 - 4 * 7 / 16
    assert precond.flop_eq("spectral_generic", "torch") == 10.0  # fast paths off: x @ xᵀ
    assert precond.flop_eq("muon_ns5", "torch") == 15.0  # the reference forms X Xᵀ in full
    assert precond.analytic("spectral_kron_eigs")["products"] == 12
    assert precond.analytic("spectral_quartic")["products"] == 12
    assert precond.analytic("spectral_exact")["products"] == 8
    assert precond.analytic("eigh_refresh")["products"] == 6
    assert precond.analytic("muon_ns5")["products"] == 15
    assert precond.flop_eq("eigh_refresh", "numpy") is None
    assert precond.analytic_label("eigh_refresh", "numpy") == "6+2 eigh"


@pytest.mark.skipif(not _has_torch(), reason="torch not installed")
@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("spectral_quadratic", 10),
        ("spectral_kron_eigs", 12),
        ("spectral_quartic", 12),
        ("spectral_neumann", 12),
        ("spectral_generic", 10),
        ("spectral_exact", 8),
        ("eigh_refresh", 6),
        ("muon_ns5", 15),
    ],
)
def test_analytic_count_matches_torch_profile(method, expected):
    """Count the n×n×n GEMM kernels each method really launches (torch profiler, n = 24)."""
    pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity, profile

    n = 24
    assert precond.analytic(method)["products"] == expected
    _, fns = precond._callables("torch", n, 1, 0, [method])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fns[method]()
    # (a dot product, e.g. a Frobenius norm, also runs as a (1, n²)·(n², 1) "mm")
    gemms = [
        e.input_shapes
        for e in prof.events()
        if e.name in ("aten::mm", "aten::addmm")
        and all(list(s) in ([], [n, n]) for s in e.input_shapes)
    ]
    assert len(gemms) == expected, gemms


def test_newton_schulz_matches_torch_optim_muon_loop():
    """The generic NS5 equals torch.optim.Muon's loop (fp32 here) and shrinks σ towards 1."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal((12, 8)).astype(np.float32)
    x = reference.newton_schulz5(g)
    assert x.shape == g.shape and x.dtype == np.float32
    sv = np.linalg.svd(x, compute_uv=False)
    assert np.all((sv > 0.3) & (sv < 1.5))
    if _has_torch():
        import torch

        xt = reference.newton_schulz5(torch.from_numpy(g)).numpy()
        np.testing.assert_allclose(x, xt, rtol=0, atol=1e-4)


def test_eigh_refresh_is_the_kronecker_root():
    """The eigh baseline's step is (L ⊗ R)^{-1/2p} vec(G) of its refreshed factors."""
    rng = np.random.default_rng(1)
    from spectral_curv._array import array_namespace

    g = rng.standard_normal((5, 4))
    left, right = np.eye(5), np.eye(4)
    (lf, rf, *_), step = reference.eigh_refresh(array_namespace(g), left, right, g, p=2)

    def mpow(s, t):
        w, v = np.linalg.eigh(s)
        return (v * w**t) @ v.T

    np.testing.assert_allclose(step, mpow(lf, -0.25) @ g @ mpow(rf, -0.25), atol=1e-12)


def test_spectral_route_is_float32_and_what_the_optimizer_computes():
    """The timed call is a refresh step of SpectralKron: optim.refresh, then the step in the
    basis before it with the refreshed V (the lagged order of corrected eigenvalues)."""
    from spectral_curv import optim

    names = ["spectral_quadratic", "spectral_kron_eigs", "spectral_neumann", "spectral_exact"]
    _, fns = precond._callables("numpy", 16, 1, 0, names)
    for name, fn in fns.items():
        new, step = fn()
        assert isinstance(new, kron.KronState)
        assert step.dtype == np.float32
        assert all(a.dtype == np.float32 for a in new if a is not None)
        assert (new.V is None) == (name == "spectral_kron_eigs")  # the default has V
    raw = precond._inputs(16, 0)
    st = kron.KronState(np.float32(1.0), raw["B_C"], raw["d_C"], raw["B_K"], raw["d_K"])
    st = st._replace(V=np.ones_like(raw["G"]))  # the default: corrected eigenvalues
    ref, _ = optim.refresh(
        st, raw["G"], precond_lr=precond.BETA2, damping=precond.DAMPING, cayley="quadratic"
    )
    new, step = fns["spectral_quadratic"]()
    for a, b in zip(new, ref):
        np.testing.assert_array_equal(a, b)
    lagged = st._replace(V=ref.V)  # the old basis, the new V
    np.testing.assert_allclose(
        step,
        optim.direction(lagged, raw["G"], p=precond.P_ROOT, norm_p=precond.NORM_P),
        rtol=1e-5,
        atol=1e-6,
    )
    other = optim.direction(ref, raw["G"], p=precond.P_ROOT, norm_p=precond.NORM_P)
    assert not np.allclose(step, other, atol=1e-3)
    assert optim.Options().p == precond.P_ROOT and precond.NORM_P == 2.0  # what users run


def test_report_table_markdown_plot(data, tmp_path):
    text = rep.table(data)
    for label in ("spectral, Neumann Cayley K=1", "eigh refresh", "Muon NS5", "products"):
        assert label in text
    assert "mm-eq  " in text and "optim.refresh" in text  # the legend under the table
    md = tmp_path / "bench.md"
    md.write_text("# Benchmarks\n\nhand-written intro\n")
    sec = rep.markdown_section(data, plot_path="img/p.png")
    report.write_markdown(md, sec)
    report.write_markdown(md, sec)  # idempotent: replaces its own section
    out = md.read_text()
    assert out.count("precond-bench:begin") == 1 and "hand-written intro" in out
    assert "| 32 |" in out and "img/p.png" in out and "optim.refresh" in out
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    rep.plot(data, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_ratios():
    def row(b, n, m, r):
        return {"backend": b, "n": n, "method": m, "ratio": r}

    data = {
        "config": {"backends": ["numpy"]},
        "results": [
            row("numpy", 512, "spectral_quadratic", 1.0),
            row("numpy", 512, "eigh_refresh", 9.0),  # n < 1024: not quoted
            row("numpy", 1024, "spectral_quadratic", 10.0),
            row("numpy", 1024, "eigh_refresh", 25.0),
            row("numpy", 2048, "spectral_quadratic", 10.0),
            row("numpy", 2048, "eigh_refresh", 31.0),
        ],
    }
    assert rep.baseline_ratios(data) == {"numpy": (2.5, 3.1)}
    assert rep.ratio_range(2.5, 3.1) == "2.5–3.1" and rep.ratio_range(1.71, 1.74) == "1.7"


def test_cli_quick_smoke(capsys, tmp_path):
    out = tmp_path / "results"
    rc = bench_main(
        [
            "precond",
            "--sizes",
            "16",
            "--repeats",
            "1",
            "--backend",
            "numpy",
            "--quick",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "spectral, Neumann Cayley K=1" in printed and "Muon NS5" in printed
    assert printed.startswith("bench precond (quick): 1 backends × 1 sizes")
    assert "threads: " in printed.splitlines()[0]
    payload = json.loads((out / "precond_quick.json").read_text())
    assert {r["method"] for r in payload["results"]} == set(precond.methods_for("numpy"))
    assert payload["config"]["quick"] and payload["config"]["threads"]["requested"] == 1
    assert "(quick run)" in (out / "precond_quick.md").read_text()
    assert (out / "precond_quick.png").exists()
    assert not (tmp_path / "docs").exists()


def test_heldout_lm_learns_and_writes_every_run(tmp_path, capsys):
    """``bench heldout``: the transformer learns the source (its test loss falls from about
    log 32, staying above the source's entropy), a run is reproducible, and every run lands
    in the JSON."""
    pytest.importorskip("torch")
    import json
    import math

    from spectral_curv.bench import heldout
    from spectral_curv.bench.__main__ import main

    assert heldout.CONFIGS["default"] == {}  # the library's defaults, nothing else
    a0, a = (heldout.lm_run({}, lr=1e-3, seed=0, steps=n) for n in (0, 60))
    assert heldout.ENTROPY_FLOOR < a < a0 - 0.1 and abs(a0 - math.log(heldout.VOCAB)) < 0.5
    assert heldout.lm_run({}, lr=1e-3, seed=0, steps=60) == a
    argv = ["heldout", "--configs", "default", "p2", "--lrs", "1e-3", "--seeds", "2"]
    assert main([*argv, "--steps", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "heldout.json").read_text())["rows"]
    assert [(r["config"], r["seed"]) for r in rows] == [
        ("default", 0), ("default", 1), ("p2", 0), ("p2", 1)
    ]  # fmt: skip
    assert "p2" in capsys.readouterr().out
