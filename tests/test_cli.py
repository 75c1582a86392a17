"""The ``spectral-curv`` command line: help texts, where runs write (never the repository's
``docs/`` unless ``--write-docs``), readable plots, and docs prose that matches its numbers."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from spectral_curv import cli
from spectral_curv.bench import report

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    # argparse wraps lines, also after a hyphen: undo that for the checks
    return re.sub(r"-\n\s+", "-", capsys.readouterr().out)


def test_help_lists_commands_with_descriptions(capsys):
    top = _help(capsys, [])
    for name in ("demo", "bench", "reproduce"):
        assert re.search(rf"^\s+{name}\s+\S", top, re.M), top  # a described subcommand
    bench = _help(capsys, ["bench"])
    assert bench.startswith("usage: spectral-curv bench")
    for name in ("precond", "optim", "train", "soak", "roots", "heldout"):
        assert re.search(rf"^\s+{name}\s+\S", bench, re.M), bench
    train = _help(capsys, ["bench", "train"])
    assert train.startswith("usage: spectral-curv bench train")
    assert "(default None)" not in train and "spectral-curv-results" in train
    repro = _help(capsys, ["reproduce"])
    assert "``" not in repro and ":mod:" not in repro and "fig9" in repro
    for argv in (["demo"], ["bench", "precond"], ["bench", "optim"], ["bench", "soak"]):
        text = _help(capsys, argv)
        assert "--out DIR" in text and "--write-docs" in text and "(default None)" not in text


def test_python_m_bench_names_itself():
    from spectral_curv.bench.__main__ import build_parser

    assert build_parser().prog == "python -m spectral_curv.bench"


def test_demo_duration_is_stated_alike_everywhere():
    """One statement of the demo's size and duration: DEMO's seeds and steps, about a minute."""
    from spectral_curv.bench import train

    seeds, steps = train.DEMO["seeds"], train.DEMO["steps"]
    texts = {
        "cli": cli.DEMO_DESCRIPTION,
        "bench.train": train.__doc__ or "",
        "README": (REPO / "README.md").read_text(),
    }
    for where, text in texts.items():
        flat = " ".join(text.split())
        assert "about a minute" in flat, where
        assert f"{seeds} seeds × {steps} steps" in flat, where
        assert not re.search(r"≤ 3 minutes|under 3 minutes|3 seeds, under", flat), where


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


TINY_RUNS = {
    "demo": [
        "demo",
        *("--dataset", "digits", "--steps", "2", "--seeds", "1"),
        *("--optimizers", "adamw", "spectral_p2_quad", "--quiet"),
    ],
    "train": ["bench", "train", "--quick", "--quiet"],
    "precond": [
        "bench",
        "precond",
        "--quick",
        *("--sizes", "16", "--repeats", "1", "--backend", "numpy", "--quiet"),
    ],
    "optim": [
        "bench",
        "optim",
        "--quick",
        *("--width", "16", "--vocab", "32", "--tokens", "16", "--steps", "2"),
        *("--intervals", "2", "--powers", "2", "--quiet"),
    ],
    "reproduce": ["reproduce", "fig2", "fig7", "fig8", "fig3", "fig9", "--quick", "--quiet"],
}
EXPECTED = {
    "demo": {"demo.md", "demo.json", "demo_mlp.png"},
    "train": {"train_quick.md", "train_quick.json", "train_digits_mlp_quick.png"},
    "precond": {"precond_quick.md", "precond_quick.json", "precond_quick.png"},
    "optim": {"optim_quick.md", "optim_quick.json", "optim_quick.png"},
    "reproduce": {"reproduction_quick.json"}
    | {f"repro_{f}_quick.png" for f in ("fig2", "fig7", "fig8", "fig3", "fig9")},
}


@pytest.mark.slow
def test_runs_write_the_output_folder_never_docs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    before = _hashes(DOCS)
    for argv in TINY_RUNS.values():
        assert cli.main(argv) == 0
    assert _hashes(DOCS) == before
    out = tmp_path / report.DEFAULT_OUT
    written = {p.name for p in out.iterdir()}
    for name, files in EXPECTED.items():
        assert files <= written, (name, files - written)
    assert str(out) in capsys.readouterr().err  # the folder's path is printed
    # --write-docs needs the repository's docs/ and refuses quick runs
    with pytest.raises(SystemExit, match="repository root"):
        cli.main(["reproduce", "fig2", "--write-docs"])
    with pytest.raises(SystemExit, match="--quick"):
        cli.main(["bench", "precond", "--quick", "--write-docs"])


MAX_LOG_LABELS = 8


def _check_figure(fig) -> list[str]:
    """Problems of a figure about to be saved: content outside the canvas, overlapping tick
    labels, too many labels on a log axis."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    problems = []
    tight, w, h = fig.get_tightbbox(r), *fig.get_size_inches()
    tol = 0.02
    if tight.x0 < -tol or tight.y0 < -tol or tight.x1 > w + tol or tight.y1 > h + tol:
        problems.append(f"content outside the figure: {tight} vs {w}×{h} in")
    for ax in fig.axes:
        frame = ax.get_window_extent(r).expanded(1.5, 1.5)
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            labels = [
                t
                for t in axis.get_ticklabels(which="both")
                if t.get_visible() and t.get_text() and frame.overlaps(t.get_window_extent(r))
            ]
            boxes = [t.get_window_extent(r) for t in labels]
            if axis.get_scale() == "log" and len(labels) > MAX_LOG_LABELS:
                problems.append(f"{ax.get_title()!r} {name}: {len(labels)} log-axis labels")
            for i, a in enumerate(boxes):
                for b in boxes[i + 1 :]:
                    if a.overlaps(b):
                        problems.append(f"{ax.get_title()!r} {name}: tick labels overlap")
    return problems


@pytest.mark.slow
def test_every_png_the_cli_writes_is_readable(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    seen: dict[str, list[str]] = {}
    save = Figure.savefig

    def checked(self, fname, *args, **kwargs):
        seen[Path(fname).name] = _check_figure(self)
        return save(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", checked)
    monkeypatch.chdir(tmp_path)
    for argv in TINY_RUNS.values():
        assert cli.main(argv) == 0
    pngs = {name for files in EXPECTED.values() for name in files if name.endswith(".png")}
    assert pngs <= set(seen), pngs - set(seen)
    bad = {name: p for name, p in seen.items() if p}
    assert not bad, bad


def test_log_ticks_are_few_and_plain():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for lo, hi in ((0.7, 60.0), (0.35, 0.9), (1e-16, 1.0), (3.0, 3.3), (7.0, 20.0), (6.5, 11.0)):
        fig, ax = plt.subplots()
        ax.set_xscale("log")
        report.log_ticks(ax, "x", lo, hi)
        locs = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert 2 <= len(locs) <= 7, (lo, hi, locs)
        # no two labels crowded together (8, 9, 10 on a short axis overlapped: a flaky PNG check)
        gaps = np.diff(np.log10(locs))
        assert gaps.min() >= np.log10(hi / lo) / 8 - 1e-12, (lo, hi, locs)
        assert ax.get_xlim() == pytest.approx((lo, hi))
        plt.close(fig)
    lo, hi = report.log_limits([1.0, 50.0], text_room=0.35)
    assert lo < 1.0 and hi > 50.0 * 1.3 * 5  # the right third is left for labels


def test_progress_eta_leaves_warm_steps_out(monkeypatch):
    clock = iter([0.0, 10.0, 11.0, 12.0, 13.0])  # a 10 s first step, then 1 s steps
    monkeypatch.setattr(report.time, "perf_counter", lambda: next(clock))
    p = report.Progress(10, quiet=True)
    p.update(1, warm=True)
    assert p.eta_s() is None
    p.update(1)
    p.update(1)
    assert p.eta_s() == pytest.approx(7.0)  # 7 steps left at 1 s each, not at ~4 s


def _quoted(pattern: str, text: str) -> tuple[str, str]:
    m = re.search(pattern, " ".join(text.split()))
    assert m, pattern
    return m.group(1), m.group(2)


def test_eigh_cost_in_the_prose_matches_the_json():
    """README and docs/benchmarks.md quote the eigh/spectral ratio the published JSON gives."""
    from spectral_curv.bench import precond_report as rep

    data = json.loads((DOCS / "benchmarks_precond.json").read_text())
    q = {b: rep.ratio_range(*v) for b, v in rep.baseline_ratios(data).items()}
    readme = _quoted(
        r"`eigh` of both factors \(([\d.–]+)× our cost on numpy, ([\d.–]+)× on torch\)",
        (REPO / "README.md").read_text(),
    )
    docs = _quoted(
        r"\*eigh refresh\* costs ([\d.–]+)× the quadratic spectral route on numpy and "
        r"([\d.–]+)× on torch",
        (DOCS / "benchmarks.md").read_text(),
    )
    assert readme == docs == (q["numpy"], q["torch"])
