"""Tests of the training benchmark (``spectral-curv bench train`` / ``spectral-curv demo``).

Loaders: shapes, dtypes, checksums and the errors for missing / altered files. The bench
code path runs end-to-end on a tiny digits subset (a few steps, seconds) through the CLI;
the structure of the results is checked, never a timing or an accuracy.
"""

from __future__ import annotations

import gzip
import json
import statistics
import struct

import numpy as np
import pytest

from spectral_curv.bench import data

torch = pytest.importorskip("torch")

from spectral_curv import cli  # noqa: E402
from spectral_curv.bench import report, train  # noqa: E402
from spectral_curv.bench.__main__ import build_parser  # noqa: E402
from spectral_curv.bench.train import registry, runner  # noqa: E402
from spectral_curv.bench.train import report as train_report  # noqa: E402

HAS_HEAVYBALL = train.unavailable(train.optimizer_registry()["soap"]) is None


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: tiny ops with 2+ threads stall on a shared, busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write_idx(path, arr: np.ndarray) -> None:
    code = {np.uint8: 0x08}[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(gzip.compress(head + arr.tobytes(), compresslevel=1))


def _fake_fashion(tmp_path, n_train: int = 60000, n_test: int = 10000):
    """Four IDX files of the right names (blank images: fast to compress)."""
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((n_train, 28, 28), dtype=np.uint8))
    _write_idx(
        tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train, dtype=np.uint8)
    )
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.full((n_test, 28, 28), 7, dtype=np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test, dtype=np.uint8))
    return tmp_path


# --------------------------------------------------------------------------- loaders


@pytest.mark.slow
@pytest.mark.skipif(not data.fashion_mnist_available(), reason="dataset-fashion-mnist absent")
def test_fashion_mnist_shapes_and_checksums():
    ds = data.load_fashion_mnist()
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert set(np.unique(ds.y_train)) == set(range(10)) == set(np.unique(ds.y_test))
    assert abs(float(ds.x_train.mean())) < 1e-3 and abs(float(ds.x_train.std()) - 1) < 1e-3
    assert np.bincount(ds.y_test).tolist() == [1000] * 10  # the balanced release
    assert "verified" in ds.source


def test_missing_directory_names_the_apt_package(tmp_path):
    with pytest.raises(data.DatasetMissingError, match="apt install dataset-fashion-mnist"):
        data.load_fashion_mnist(tmp_path / "nowhere")
    assert not data.fashion_mnist_available(tmp_path)


def test_checksum_mismatch_is_a_clear_error(tmp_path):
    root = _fake_fashion(tmp_path, n_train=10, n_test=10)  # SHA-256 is checked first
    with pytest.raises(data.ChecksumError, match=r"SHA-256 \w+ does not match"):
        data.load_fashion_mnist(root)


def test_wrong_shape_detected_without_checksums(tmp_path):
    root = _fake_fashion(tmp_path, n_train=100, n_test=10)
    with pytest.raises(data.ChecksumError, match=r"shape \(100, 28, 28\), expected"):
        data.load_fashion_mnist(root, verify=False)


def test_right_shape_loads_without_checksums(tmp_path):
    ds = data.load_fashion_mnist(_fake_fashion(tmp_path), verify=False)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.y_test.shape == (10000,)
    assert "not checked" in ds.source


def test_read_idx_roundtrip_and_bad_magic(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "b.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(data.ChecksumError, match="not an IDX file"):
        data.read_idx(tmp_path / "b.gz")


def test_digits_and_auto_fallback(tmp_path):
    ds = data.load_digits_data()
    assert ds.x_train.shape == (1438, 1, 8, 8) and ds.x_test.shape == (359, 1, 8, 8)
    assert ds.x_train.dtype == np.float32 and set(np.unique(ds.y_test)) == set(range(10))
    auto = data.load_dataset("auto", root=tmp_path)
    assert auto.name == "digits" and "not installed" in auto.notes[0]
    assert "dataset-fashion-mnist" in auto.notes[0]


def test_train_val_split_deterministic_and_disjoint():
    tr, va = data.train_val_split(1000, 100, seed=3)
    tr2, va2 = data.train_val_split(1000, 0.1, seed=3)
    np.testing.assert_array_equal(va, va2)
    np.testing.assert_array_equal(tr, tr2)
    assert len(va) == 100 and len(np.intersect1d(tr, va)) == 0
    assert len(np.union1d(tr, va)) == 1000
    assert not np.array_equal(va, data.train_val_split(1000, 100, seed=4)[1])
    with pytest.raises(ValueError, match="non-empty"):
        data.train_val_split(10, 10)


# --------------------------------------------------------------------------- models / registry


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
@pytest.mark.parametrize("name", train.MODELS)
def test_models_forward(name, shape):
    model = train.build_model(name, shape)
    assert model(torch.randn(3, *shape)).shape == (3, 10)
    assert hasattr(model, "head")
    if name == "vit":
        assert model.pos.shape[1] == 16  # 7×7 patches of 28×28, 2×2 of 8×8


def test_muon_split_leaves_head_and_non_matrices_to_adamw():
    model = train.build_model("mlp", (1, 8, 8))
    hidden, rest = registry._muon_split(model)
    assert [p.shape for p in hidden] == [(256, 64), (256, 256)]
    assert any(p is model.head.weight for p in rest)
    assert all(p.ndim == 1 or p is model.head.weight for p in rest)


def test_registry_and_sampling():
    reg = train.optimizer_registry()
    assert set(train.ALL_OPTIMIZERS) <= set(reg) | {"muon_bf16"}
    rng = np.random.default_rng(0)
    for spec in reg.values():
        assert set(spec.defaults) == set(spec.space) and spec.knob in spec.space
        hp = train.sample_hparams(spec.space, rng)
        for k, v in hp.items():
            s = spec.space[k]
            assert (s[1] <= v <= s[2]) if s[0] == "log" else v in s[1]
    assert set(train.DEMO["optimizers"]) <= set(train.DEMO["hparams"])


def test_reach_and_summary_ratio():
    curve = {
        "step": [0, 5, 10],
        "wall_s": [0.0, 1.0, 2.0],
        "loss": [2.0, 1.0, 0.5],
        "acc": [0.1, 0.5, 0.8],
    }
    assert runner.reach(curve, 1.0) == (5, 1.0)
    assert runner.reach(curve, 0.1) == (None, None)
    run = {
        "curve": curve,
        "final_loss": 0.5,
        "final_acc": 0.8,
        "diverged": False,
        "step_s_steady": 0.01,
        "fb_s_steady": 0.01,
        "state_bytes": 0,
        "peak_rss_bytes": 0,
        "hparams": {},
    }
    runs = [{**run, "optimizer": "adamw"}, {**run, "optimizer": "x", "step_s_steady": 0.03}]
    rows, target = train.summarize(runs, ["adamw", "x"], {}, None)
    assert target == pytest.approx(0.55)
    assert rows[0]["step_ratio"] == 1.0 and rows[1]["step_ratio"] == pytest.approx(3.0)
    assert rows[1]["whole_ratio"] == pytest.approx(2.0)  # (0.03 + 0.01) / (0.01 + 0.01)
    assert rows[1]["steps_to_target"] == 10


def test_steady_mean_counts_refresh_steps():
    """A refresh every T steps must show in the step time at 1/T weight (a median hides it);
    the first STEADY_SKIP steps are left out."""
    k = train.STEADY_SKIP
    xs = [100.0] * k + [1.0, 3.0] * 30  # warm-up, then T = 2: cheap / refresh
    assert statistics.median(xs[k:]) in (1.0, 2.0, 3.0)
    assert runner._steady_mean(xs) == pytest.approx(2.0)
    assert runner._steady_mean([5.0, 7.0]) == pytest.approx(6.0)  # too short: all steps
    assert runner._steady_mean([]) is None


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_bench_train_end_to_end(tmp_path, capsys):
    opts = ["adamw", "muon_fp32", "spectral_p2_quad", "spectral_p1_exact", "shampoo"]
    if HAS_HEAVYBALL:
        opts += ["soap", "psgd_kron"]
    out = tmp_path / "res"
    out.mkdir()
    # the preconditioner-cost table is folded in from bench precond's JSON in the same folder
    precond = {
        "config": {"backends": ["numpy"], "date": "today"},
        "results": [
            {"backend": "numpy", "n": n, "method": m, "label": m.upper(), "ratio": r}
            for n, m, r in (
                (512, "spectral_quadratic", 12.5),
                (1024, "spectral_quadratic", 11.25),
                (1024, "eigh_refresh", 34.0),
                (256, "spectral_quadratic", 99.0),
            )
        ],
    }
    (out / "precond.json").write_text(json.dumps(precond))
    rc = cli.main(
        [
            "bench",
            "train",
            "--dataset",
            "digits",
            "--models",
            "mlp",
            "--optimizers",
            *opts,
            "--seeds",
            "2",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--tune-budget",
            "2",
            "--tune-steps",
            "2",
            "--batch",
            "16",
            "--train-subset",
            "120",
            "--test-subset",
            "50",
            "--val-size",
            "100",
            "--sweep-steps",
            "3",
            "--sweep-repeats",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "mlp: target test loss" in printed and "SpectralKron p=2 quad" in printed
    assert "steps→target" in printed and "first evaluated step with test loss" in printed
    assert "will run: 1 model × 5 optimizers × 2 seeds × 4 steps" in captured.err.replace(
        f"{len(opts)} optimizers", "5 optimizers"
    )
    js, md = out / "train.json", out / "train.md"
    d = json.loads(js.read_text())["bench"]
    assert d["config"]["optimizers"] == opts and d["dataset"]["name"] == "digits"
    for model in ("mlp",):
        res = d["results"][model]
        assert [r["key"] for r in res["rows"]] == opts
        assert res["rows"][0]["step_ratio"] == 1.0
        assert len(res["runs"]) == 2 * len(opts)
        for r in res["runs"]:
            assert r["curve"]["step"] == [0, 2, 4] or r["diverged"]
            assert len(r["curve"]["loss"]) == len(r["curve"]["wall_s"])
            assert r["state_bytes"] > 0 or r["diverged"]
        for k in opts:
            assert len(res["tuning"][k]["trials"]) == 2
            assert (
                res["tuning"][k]["trials"][0]["hparams"] == train.optimizer_registry()[k].defaults
            )
        assert (out / f"train_digits_{model}.png").stat().st_size > 10_000
    text = md.read_text()
    assert train_report.markers("bench")[0] in text and "| AdamW |" in text
    assert "(train_digits_mlp.png)" in text and "(train.json)" in text
    sweep = d["results"]["mlp"]["sweep"]  # SpectralKron p=2 quad: the only sweep key run
    assert [(r["key"], r["T"]) for r in sweep] == [("adamw", None)] + [
        ("spectral_p2_quad", t) for t in train.SWEEP_INTERVALS
    ]
    assert sweep[0]["whole_ratio"] == 1.0 and all(r["whole_ms"] > 0 for r in sweep)
    assert "Step time vs refresh interval T (mlp" in text
    assert "| method | numpy n=512 | numpy n=1024 |" in text  # the two largest sizes
    assert "| SPECTRAL_QUADRATIC | 12.5 | 11.2 |" in text and "| EIGH_REFRESH | — | 34.0 |" in text
    # --from-json re-renders the same report without running anything
    out2 = tmp_path / "again"
    out2.mkdir()
    (out2 / "precond.json").write_text(json.dumps(precond))
    args = ["--from-json", str(js), "--out", str(out2), "--quiet"]
    assert cli.main(["bench", "train", *args]) == 0
    assert (out2 / "train_digits_mlp.png").exists() and not (out2 / "train.json").exists()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    again = (out2 / "train.md").read_text()
    assert [line for line in again.splitlines() if line.startswith("| ")] == table
    assert json.loads(js.read_text())["bench"]["command"].startswith("spectral-curv bench train")


@pytest.mark.slow
def test_bench_train_quick_is_labelled(tmp_path, capsys):
    out = tmp_path / "q"
    assert cli.main(["bench", "train", "--quick", "--out", str(out), "--quiet"]) == 0
    assert "(quick run)" in (out / "train_quick.md").read_text()
    assert "bench" in json.loads((out / "train_quick.json").read_text())
    assert (out / "train_digits_mlp_quick.png").exists()
    with pytest.raises(SystemExit, match="--write-docs"):
        cli.main(["bench", "train", "--quick", "--write-docs", "--quiet"])


def test_cnn_and_vit_train_with_fixed_hparams():
    d = train.run_benchmark(
        models=["cnn", "vit"],
        optimizers=["adamw", "spectral_p2_quad"],
        dataset="digits",
        seeds=1,
        steps=3,
        batch=16,
        eval_every=3,
        tune_budget=0,
        train_subset=64,
        test_subset=32,
        val_size=50,
        quiet=True,
    )
    for model in ("cnn", "vit"):
        runs = d["results"][model]["runs"]
        assert [r["optimizer"] for r in runs] == ["adamw", "spectral_p2_quad"]  # 1 seed
        assert all(r["steps_done"] == 3 and np.isfinite(r["final_loss"]) for r in runs)
    assert (
        d["results"]["vit"]["runs"][0]["n_params"] > d["results"]["cnn"]["runs"][0]["n_params"] > 0
    )


def test_demo_cli_tiny_with_fallback_note(tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"bench": {"kept": True}}))
    rc = cli.main(
        [
            "demo",
            "--data-root",
            str(tmp_path / "none"),
            "--steps",
            "2",
            "--seeds",
            "1",
            "--optimizers",
            "adamw",
            "spectral_p2_exact",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.startswith("demo: threads: torch 1")
    assert "NOTE: Fashion-MNIST is not installed" in printed
    assert "SpectralKron p=2 exact" in printed
    whole = json.loads((out / "demo.json").read_text())
    assert whole["bench"] == {"kept": True}  # the other section survives
    assert (
        whole["demo"]["results"]["mlp"]["rows"][1]["hparams"]
        == train.DEMO["hparams"]["spectral_p2_exact"]
    )
    assert train_report.markers("demo")[0] in (out / "demo.md").read_text()
    assert (out / "demo_mlp.png").exists()


def test_missing_data_is_exit_2(tmp_path, capsys):
    rc = cli.main(
        [
            "demo",
            "--dataset",
            "fashion-mnist",
            "--data-root",
            str(tmp_path),
            "--no-write",
            "--quiet",
        ]
    )
    assert rc == 2
    assert "apt install dataset-fashion-mnist" in capsys.readouterr().err


def test_cli_parses():
    a = build_parser().parse_args(["train", "--models", "mlp", "cnn", "--seeds", "5"])
    assert a.models == ["mlp", "cnn"] and a.seeds == 5 and a.tune_budget == 8
    assert a.optimizers == list(train.DEFAULT_BENCH_OPTIMIZERS)
    assert a.out == report.DEFAULT_OUT and a.threads == 1 and not a.write_docs
    d = cli.demo_parser().parse_args([])
    assert d.steps == train.DEMO["steps"] and d.out == report.DEFAULT_OUT
    assert build_parser().parse_args(["optim", "--quick"]).bench == "optim"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--optimizers", "sgd"])
    for argv in ([], ["nope"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--help"])
    assert e.value.code == 0
