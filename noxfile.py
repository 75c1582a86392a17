"""nox sessions: one test session per backend, plus lint and the benchmark.

nox -s tests-numpy tests-strict tests-torch tests-jax   # CPU backends
nox -s tests-cupy                                        # needs a GPU
nox -s lint
nox -s bench
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests-numpy", "tests-strict", "tests-torch", "tests-jax", "lint"]

TORCH = "torch==2.13.0"  # the CPU build that lies on these machines' disk


def _tests(session: nox.Session, backend: str, *extra: str) -> None:
    session.install("-e", ".[test]", *extra)
    session.run("python", "-m", "pytest", *session.posargs, env={"SPECTRAL_CURV_BACKENDS": backend})


@nox.session(name="tests-numpy")
def tests_numpy(session: nox.Session) -> None:
    _tests(session, "numpy")


@nox.session(name="tests-strict")
def tests_strict(session: nox.Session) -> None:
    _tests(session, "array_api_strict")


@nox.session(name="tests-torch")
def tests_torch(session: nox.Session) -> None:
    _tests(session, "torch", TORCH)


@nox.session(name="tests-jax")
def tests_jax(session: nox.Session) -> None:
    _tests(session, "jax", "jax")


@nox.session(name="tests-cupy")
def tests_cupy(session: nox.Session) -> None:
    _tests(session, "cupy", "cupy-cuda12x")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff", "mypy", "numpy", "array-api-compat", "array-api-extra")
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("mypy")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py")


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "-d", "site", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def package(session: nox.Session) -> None:
    """Build sdist + wheel; install the wheel with each extra in turn and run 3 steps."""
    import glob
    import tempfile

    session.install("build")
    out = tempfile.mkdtemp()
    session.run("python", "-m", "build", "-o", out)
    (wheel,) = glob.glob(f"{out}/*.whl")
    for extra in ("", "[torch]", "[jax]"):
        pins = [TORCH] if extra == "[torch]" else []
        session.install(f"spectral-curv{extra} @ file://{wheel}", *pins)
        session.run("python", ".ci/smoke_wheel.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Maintainers: regenerate the published numbers in docs/ (--write-docs; run from the
    repository root). Users' runs write to ./spectral-curv-results/ instead."""
    session.install("-e", ".[bench]", TORCH)
    session.run("python", "-m", "spectral_curv.bench", "precond", "--write-docs")
    session.run("spectral-curv", "demo", "--write-docs")
    session.run("python", "-m", "spectral_curv.bench", "train", "--write-docs", *session.posargs)


@nox.session(name="bench-gpu")
def bench_gpu(session: nox.Session) -> None:
    """Maintainers, on a machine with a CUDA GPU: the GPU benchmark (one run of at most
    5 minutes on one H100/H200), written to docs/benchmarks_gpu.md + JSON. Installs torch
    from PyPI (a CUDA build on Linux) and CuPy; run from the repository root."""
    session.install("-e", ".[bench,cupy]", TORCH)
    session.run("python", "-m", "spectral_curv.bench", "device", "--write-docs", *session.posargs)
