"""What every benchmark shares: machine info, threads, output folders, progress, tables,
markdown sections and JSON files."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_OUT",
    "DOCS",
    "Files",
    "Outputs",
    "Progress",
    "add_choices_argument",
    "add_output_arguments",
    "add_quiet_argument",
    "add_seed_argument",
    "add_sizes_argument",
    "add_threads_argument",
    "legend",
    "loadavg",
    "log_limits",
    "log_ticks",
    "machine_info",
    "markers",
    "md_table",
    "median",
    "outputs",
    "progress_printer",
    "publish",
    "replace_section",
    "set_threads",
    "text_table",
    "threads_line",
    "write_json",
    "write_markdown",
]

#: Where users' runs write (relative to the working directory) unless ``--out`` says otherwise.
DEFAULT_OUT = "spectral-curv-results"
#: The published documentation, rewritten only with ``--write-docs`` (from the repository root).
DOCS = Path("docs")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# --------------------------------------------------------------------------- machine


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    with contextlib.suppress(AttributeError, OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def blas_threads() -> int | None:
    """numpy's BLAS thread count, via threadpoolctl or the loaded OpenBLAS's own symbol."""
    try:
        import threadpoolctl

        for info in threadpoolctl.threadpool_info():
            if info.get("internal_api") in ("openblas", "mkl", "blis"):
                return int(info["num_threads"])
    except Exception:  # threadpoolctl is optional
        pass
    with contextlib.suppress(OSError):
        libs = {
            line.split()[-1]
            for line in Path("/proc/self/maps").read_text().splitlines()
            if "openblas" in line.lower() and ".so" in line
        }
        for path in sorted(libs):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for sym in (
                "scipy_openblas_get_num_threads64_",
                "scipy_openblas_get_num_threads",
                "openblas_get_num_threads64_",
                "openblas_get_num_threads",
            ):
                f = getattr(lib, sym, None)
                if f is not None:
                    f.restype = ctypes.c_int
                    return int(f())
    return None


def numpy_blas() -> str:
    import numpy as np

    with contextlib.suppress(Exception):
        cfg = np.show_config(mode="dicts")  # type: ignore[call-arg]
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    return "unknown"


def machine_info(
    device: str | None = "cpu", *, numpy: bool = False, torch: bool = True
) -> dict[str, Any]:
    """CPU, core counts, Python; numpy's BLAS (``numpy``); torch's version, threads and BLAS
    (``torch``); the device (and the GPU's name on CUDA) unless ``device`` is None."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if numpy:
        import numpy as np

        info.update(
            numpy=np.__version__, numpy_blas=numpy_blas(), numpy_blas_threads=blas_threads()
        )
    if torch:
        import torch as th

        info.update(
            torch=th.__version__,
            torch_threads=th.get_num_threads(),
            torch_interop_threads=th.get_num_interop_threads(),
            torch_blas="MKL" if th.backends.mkl.is_available() else "non-MKL",
        )
    info["thread_env"] = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
    if device is not None:
        info["device"] = device
        if device.startswith("cuda"):
            import torch as th

            info["gpu"] = th.cuda.get_device_name(th.device(device))
            info["cuda"] = th.version.cuda
    return info


# --------------------------------------------------------------------------- threads


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch and BLAS threads (default 1: on a shared CPU, OpenMP threads spin-wait "
        "on each other and small ops get many times slower)",
    )


def set_threads(n: int, *, torch: bool = True) -> dict[str, Any]:
    """Use ``n`` threads: torch's intra-op pool, numpy's BLAS (threadpoolctl, when installed)
    and ``OMP/MKL/OPENBLAS_NUM_THREADS`` for child processes. Returns what is in effect."""
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    for k in THREAD_ENV:
        os.environ[k] = str(n)
    with contextlib.suppress(Exception):  # threadpoolctl is optional
        import threadpoolctl

        threadpoolctl.threadpool_limits(n)
    used: dict[str, Any] = {"requested": n, "blas": blas_threads()}
    if torch:
        with contextlib.suppress(ImportError):
            import torch as th

            th.set_num_threads(n)
            used["torch"] = th.get_num_threads()
    return used


def threads_line(used: dict[str, Any]) -> str:
    """``threads: torch 1, BLAS 1 (--threads 1; OMP/MKL/OPENBLAS_NUM_THREADS set for
    child processes)``."""
    parts = []
    if "torch" in used:
        parts.append(f"torch {used['torch']}")
    parts.append(f"BLAS {used['blas'] if used.get('blas') is not None else '?'}")
    return (
        f"threads: {', '.join(parts)} (--threads {used['requested']}; "
        "OMP/MKL/OPENBLAS_NUM_THREADS set for child processes)"
    )


# --------------------------------------------------------------------------- options


def add_sizes_argument(p: argparse.ArgumentParser, help: str) -> None:
    """``--sizes N [N ...]``: square layer sizes (default None: the command's own)."""
    p.add_argument("--sizes", type=int, nargs="+", default=None, metavar="N", help=help)


def add_choices_argument(
    p: argparse.ArgumentParser, flag: str, choices: Sequence[str], *, help: str, **kw: Any
) -> None:
    """``flag`` taking one or more of ``choices`` (``kw``: ``default``, ``metavar``)."""
    p.add_argument(flag, nargs="+", choices=choices, help=help, **kw)


def add_seed_argument(p: argparse.ArgumentParser, help: str = "input seed (default 0)") -> None:
    p.add_argument("--seed", type=int, default=0, help=help)


def add_quiet_argument(
    p: argparse.ArgumentParser, help: str = "no progress lines on stderr"
) -> None:
    p.add_argument("--quiet", action="store_true", help=help)


# --------------------------------------------------------------------------- outputs


def add_output_arguments(p: argparse.ArgumentParser, *, docs: str) -> None:
    """``--out DIR``, ``--write-docs`` (regenerate ``docs``) and ``--no-write``."""
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"output folder, created if missing (default ./{DEFAULT_OUT}/)",
    )
    p.add_argument(
        "--write-docs",
        action="store_true",
        help=f"maintainers: regenerate the published {docs} instead of writing to --out "
        "(run from the repository root, as nox -s bench does)",
    )
    p.add_argument("--no-write", action="store_true", help="print only: write no file")


@dataclass
class Outputs:
    """Where one command writes: ``folder`` (None: nothing), or the published docs."""

    folder: Path | None
    docs: bool = False
    quick: bool = False

    def file(self, docs_path: str, name: str) -> Path | None:
        """``docs/<docs_path>`` with ``--write-docs``, else ``<folder>/<name>`` (``_quick``
        before the suffix for a quick run); None when nothing is written."""
        if self.folder is None:
            return None
        if self.docs:
            return DOCS / docs_path
        p = Path(name)
        if self.quick:
            p = p.with_name(f"{p.stem}_quick{p.suffix}")
        return self.folder / p

    def announce(self) -> None:
        if self.folder is not None:
            print(f"output folder: {self.folder.resolve()}", file=sys.stderr, flush=True)


def progress_printer(quiet: bool) -> Callable[[str], None]:
    """A ``progress(msg)`` callback: each message to stderr, flushed; nothing when ``quiet``.

    >>> progress_printer(True)("not shown")
    """

    def progress(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    return progress


def outputs(args: argparse.Namespace, *, quick: bool = False) -> Outputs:
    """The :class:`Outputs` of parsed ``--out/--write-docs/--no-write``."""
    if args.no_write:
        return Outputs(None, quick=quick)
    if args.write_docs:
        if quick:
            raise SystemExit("error: --write-docs publishes full runs only, not --quick")
        if not DOCS.is_dir():
            raise SystemExit(
                f"error: --write-docs rewrites ./{DOCS}/: run it from the repository root"
            )
        return Outputs(DOCS, docs=True)
    return Outputs(Path(args.out), quick=quick)


# --------------------------------------------------------------------------- progress


class Progress:
    """A progress bar (tqdm when installed, else a line every 10 s) whose ETA comes from
    steady-state steps only: time spent on steps reported ``warm=True`` (first steps of a
    run, compilation, lazy initialisation) is left out of the rate."""

    def __init__(self, total: int, *, quiet: bool = False, unit: str = "step") -> None:
        self.total, self.n, self.unit, self.quiet = total, 0, unit, quiet
        self._steady_s, self._steady_n = 0.0, 0
        self._last = self._shown = time.perf_counter()
        self._desc = ""
        self.bar: Any = None
        if quiet:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            return
        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            unit=unit,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5 if tty else 10.0,
            bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )

    def eta_s(self) -> float | None:
        """Seconds left at the steady-state rate (None before a steady step)."""
        if not self._steady_n:
            return None
        return max(0, self.total - self.n) * self._steady_s / self._steady_n

    def _eta(self) -> str:
        s = self.eta_s()
        if s is None:
            return "ETA …"
        m, sec = divmod(round(s), 60)
        return f"ETA {m}:{sec:02d}"

    def describe(self, desc: str) -> None:
        self._desc = desc
        if self.bar is not None:
            self.bar.set_description_str(desc, refresh=False)

    def update(self, n: int = 1, *, warm: bool = False) -> None:
        now = time.perf_counter()
        if not warm:
            self._steady_s += now - self._last
            self._steady_n += n
        self._last = now
        self.n += n
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(self._eta(), refresh=False)
            self.bar.update(n)
        elif now - self._shown > 10.0 or self.n >= self.total:  # pragma: no cover
            self._shown = now
            print(
                f"{self._desc} {self.n}/{self.total} {self.unit}s, {self._eta()}", file=sys.stderr
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- tables


def median(xs: Sequence[float]) -> float | None:
    """The median of ``xs``, or None when there is none."""
    return statistics.median(xs) if xs else None


def _aligned(cells: list[list[str]], align: str | None) -> str:
    return align or "l" + "r" * (len(cells[0]) - 1)


def text_table(cells: list[list[str]], align: str | None = None) -> str:
    """``cells`` (header first) as plain-text columns; ``align`` one ``l``/``r`` per column
    (default: the first left, the others right)."""
    al = _aligned(cells, align)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]

    def row(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, al)
        ).rstrip()

    return "\n".join([row(cells[0]), "  ".join("-" * w for w in widths), *map(row, cells[1:])])


def md_table(cells: list[list[str]], align: str | None = None) -> list[str]:
    """``cells`` (header first) as markdown table lines (default: numbers right-aligned)."""
    al = _aligned(cells, align)
    lines = ["| " + " | ".join(cells[0]) + " |"]
    lines.append("|" + "|".join("---" if a == "l" else "---:" for a in al) + "|")
    return lines + ["| " + " | ".join(r) + " |" for r in cells[1:]]


def legend(entries: Sequence[tuple[str, str]]) -> str:
    """One line per column that needs saying: ``  column: meaning``."""
    width = max(len(k) for k, _ in entries)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in entries)


# --------------------------------------------------------------------------- plots


def log_limits(values: Sequence[float], *, text_room: float = 0.0) -> tuple[float, float]:
    """Log-axis limits around the positive ``values``; ``text_room`` (a fraction of the axis)
    is left free to the right of the largest, for labels at the ends of bars."""
    import math

    pos = [v for v in values if v and v > 0 and math.isfinite(v)] or [1.0]
    lo, hi = min(pos) / 1.5, max(pos) * 1.3
    if text_room:
        span = math.log10(hi / lo)
        hi *= 10 ** (span * text_room / (1.0 - text_room))
    return lo, hi


def log_ticks(ax: Any, which: str, lo: float, hi: float, max_labels: int = 7) -> None:
    """Readable ticks on a log axis over ``[lo, hi]``: 1-2-5 steps (whole decades, or every
    other one, when those would be more than ``max_labels``) labelled as plain numbers, no
    minor labels (matplotlib's minor labels overlap on axes spanning less than a decade)."""
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    def ticks(subs: Sequence[float], every: int = 1) -> list[float]:
        e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        return [
            m * 10.0**e
            for e in range(e0, e1 + 1)
            if (e - e0) % every == 0
            for m in subs
            if lo <= m * 10.0**e <= hi
        ]

    choices = [ticks((1.0, 2.0, 5.0)), ticks((1.0,)), ticks((1.0,), 2), ticks((1.0,), 3)]
    # fine steps (1, 1.5, 2, 3, …, 9) crowd at the top of a decade (8, 9, 10): keep a tick only
    # an eighth of the axis (in log units) after the last kept one, so labels never touch
    gap = math.log10(hi / lo) / 8.0
    fine: list[float] = []
    for v in ticks((1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)):
        if not fine or math.log10(v / fine[-1]) >= gap:
            fine.append(v)
    if len(choices[0]) < 3 and len(fine) <= max_labels:
        choices.insert(0, fine)
    locs = next((t for t in choices if len(t) <= max_labels), choices[-1])
    if len(locs) < 2:
        locs = sorted({float(f"{lo * 1.05:.2g}"), float(f"{hi / 1.05:.2g}")})
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xlim if which == "x" else ax.set_ylim)(lo, hi)
    axis.set_major_locator(FixedLocator(locs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


# --------------------------------------------------------------------------- files


def markers(tag: str, command: str | None = None) -> tuple[str, str]:
    """The comment lines that delimit a generated section: ``<!-- tag:begin … -->``."""
    by = f" (written by `{command}`)" if command else ""
    return f"<!-- {tag}:begin{by} -->", f"<!-- {tag}:end -->"


def replace_section(
    path: str | os.PathLike[str], section: str, begin: str, end: str, header: str
) -> None:
    """Replace the text of ``path`` between the marker lines ``begin`` and ``end`` (both
    included in ``section``) by ``section``, or append ``section``; a missing file starts
    with ``header``. Hand-written text outside the markers is kept."""
    p = Path(path)
    text = p.read_text() if p.exists() else header
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        text = pre + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def write_markdown(path: str | os.PathLike[str], section: str, header: str = "") -> None:
    """:func:`replace_section` with the markers read off ``section``: its first line and its
    last ``<!-- …:end -->`` line."""
    begin = section.split("\n", 1)[0]
    end = next(
        line
        for line in reversed(section.splitlines())
        if line.startswith("<!-- ") and line.endswith(":end -->")
    )
    replace_section(path, section, begin, end, header)


def write_json(path: str | os.PathLike[str], name: str | None, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path``; with ``name``, under that key (the file's other keys kept)."""
    p = Path(path)
    whole: dict[str, Any] = data
    if name is not None:
        whole = {}
        if p.exists():
            with contextlib.suppress(ValueError):
                whole = json.loads(p.read_text())
        whole[name] = data
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(whole, indent=1, default=str) + "\n")


def rel(path: str | os.PathLike[str] | None, base: str | os.PathLike[str]) -> str | None:
    """``path`` relative to the folder ``base`` (for links in a markdown file there)."""
    if path is None:
        return None
    return os.path.relpath(Path(path).resolve(), Path(base).resolve())


@dataclass(frozen=True)
class Files:
    """What :func:`publish` writes: each of ``md``/``js``/``png`` is ``(docs path, file
    name)`` (:meth:`Outputs.file`); ``title`` heads a markdown file written anew."""

    md: tuple[str, str]
    js: tuple[str, str]
    png: tuple[str, str]
    title: str


def publish(out: Outputs, data: dict[str, Any], rep: Any) -> int:
    """Print a benchmark's table (``rep.table``), then write its JSON, plot (``rep.plot``)
    and markdown section (``rep.markdown_section``) to ``rep.FILES`` (:class:`Files`), the
    report module ``rep`` being the benchmark's. Nothing is written with ``--no-write``.
    Returns 0."""
    print(rep.table(data))
    files: Files = rep.FILES
    md_p, js_p, png_p = out.file(*files.md), out.file(*files.js), out.file(*files.png)
    if md_p is None or js_p is None or png_p is None:
        return 0
    write_json(js_p, None, data)
    plot_path: str | None = str(png_p)
    try:
        rep.plot(data, png_p)
    except ImportError as e:
        print(f"no plot ({e}); pip install matplotlib", file=sys.stderr)
        plot_path = None
    sec = rep.markdown_section(
        data, plot_path=rel(plot_path, md_p.parent), json_path=rel(js_p, md_p.parent)
    )
    write_markdown(md_p, sec, files.title)
    for path in (md_p, js_p, plot_path):
        if path:
            print(f"wrote {path}", file=sys.stderr)
    return 0
