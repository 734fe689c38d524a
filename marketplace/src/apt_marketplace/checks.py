"""The checks a release must pass before anyone can install it, shared by the server (on
publish, in the background) and `apt market check` (locally, before uploading), so an author
sees exactly the verdict the server will reach.

Nothing here imports apt-core or apt-sandbox: the sandbox check runs in a child process
(`python -m apt_marketplace.client.sandbox_check`), which keeps the server free of plugin
code and of the core, and bounds a hostile plugin by the child's limits and a wall clock.
"""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .apx.names import name_problem
from .apx.reader import Apx, WheelEntry
from .resolver import Catalogue, ResolutionError, resolve

__all__ = ["SANDBOX_CHECK", "SANDBOX_WALL_SECONDS", "Check", "archive_checks", "dependency_check", "run_checks", "sandbox_check"]

SANDBOX_WALL_SECONDS = 240.0
SANDBOX_CHECK = "providers import and self-test in the sandbox"
_FORBIDDEN_DATA = ("scripts", "data", "headers")
_SCRIPT_GROUPS = ("console_scripts", "gui_scripts")
_STARTUP_MODULES = ("sitecustomize", "usercustomize")
#: The entry-point groups through which APT loads a plugin: providers, hooks, `apt` subcommands.
_LOAD_GROUPS = ("apt.providers", "apt.plugins", "apt.commands")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _entry_points(wheel: WheelEntry, names: list[str]) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    found = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/entry_points.txt")]
    if found:
        with wheel.open() as fh, zipfile.ZipFile(fh) as zf:
            parser.read_string(zf.read(found[0]).decode("utf-8", "replace"))
    return parser


def _wheel_names(wheel: WheelEntry) -> list[str]:
    with wheel.open() as fh, zipfile.ZipFile(fh) as zf:
        return [i.filename for i in zf.infolist()]


def _requires_dist(wheel: WheelEntry) -> set[str]:
    msg = BytesParser().parsebytes(wheel.metadata, headersonly=True)
    out: set[str] = set()
    for text in msg.get_all("Requires-Dist") or []:
        try:
            out.add(canonicalize_name(Requirement(str(text)).name))
        except InvalidRequirement:
            continue
    return out


def _install_time_code(wheel: WheelEntry, names: list[str], eps: configparser.ConfigParser) -> list[str]:
    """What pip would run or place outside the plugin's own package: `.pth` files run at every
    interpreter start, `*.data/scripts` lands in bin/ (a `pip` there replaces pip), data and
    headers land anywhere under the prefix, and a top-level module named like a dependency or
    `sitecustomize` runs when something else is imported."""
    problems = []
    shadowable = _requires_dist(wheel) | {"apt", "apt-core", "torch", "pip", "setuptools"}
    for name in names:
        parts = name.split("/")
        top = parts[0]
        if name.endswith(".pth"):
            problems.append(f"{name} is a .pth file, which runs at every interpreter start")
        elif top.endswith(".data") and len(parts) > 2 and parts[1] in _FORBIDDEN_DATA:
            problems.append(f"{name} installs into {parts[1]}/ outside site-packages")
        elif not top.endswith((".dist-info", ".data")):
            module = top.removesuffix(".py")
            if module in _STARTUP_MODULES:
                problems.append(f"{name} is {module}, which runs at interpreter start")
            elif canonicalize_name(module) in shadowable:
                problems.append(f"{name} shadows the package {module} that other code imports")
    for group in _SCRIPT_GROUPS:
        if eps.has_section(group) and eps.options(group):
            problems.append(f"entry_points.txt declares {group} ({', '.join(eps.options(group))}), which pip installs as executables")
    return problems


def archive_checks(apx: Apx) -> list[Check]:
    """Checks of the archive alone: name rules, sizes, entry points, install-time code."""
    m = apx.manifest
    out = []
    problem = name_problem(m.name)
    out.append(Check("name and version", problem is None, problem or f"{m.canonical_name} {m.version}"))
    total = sum(w.size for w in apx.wheels)
    out.append(Check("sizes", True, f"{len(apx.wheels)} wheel(s), {total} bytes; within the archive limits"))
    agree: list[str] = []
    hostile: list[str] = []
    for wheel in apx.wheels:
        names = _wheel_names(wheel)
        eps = _entry_points(wheel, names)
        declared = set(eps.options("apt.providers")) if eps.has_section("apt.providers") else set()
        loaded = [g for g in _LOAD_GROUPS if eps.has_section(g) and eps.options(g)]
        if not loaded:
            agree.append(f"{wheel.filename} has no {', '.join(_LOAD_GROUPS)} entry points, so APT would never load it")
        elif declared != set(m.provides):
            agree.append(
                f"{wheel.filename} declares {', '.join(sorted(declared))} but apx.json provides "
                f"{', '.join(m.provides) or 'nothing'}"
            )
        hostile += _install_time_code(wheel, names, eps)
    out.append(Check("manifest and entry points agree", not agree, "; ".join(agree) or ", ".join(m.provides) or "hooks only"))
    out.append(Check("no install-time code", not hostile, "; ".join(hostile[:5]) or "no .pth, scripts, data or headers"))
    return out


def dependency_check(apx: Apx, catalogue: Catalogue | None) -> Check:
    requires = dict(apx.manifest.requires)
    if not requires:
        return Check("dependencies resolve", True, "no plugin dependencies")
    if catalogue is None:
        return Check("dependencies resolve", False, "no marketplace to resolve against; pass --url")
    try:
        result = resolve(requires, catalogue, None)
    except ResolutionError as exc:
        return Check("dependencies resolve", False, exc.explanation.replace("\n", " "))
    except ValueError as exc:
        return Check("dependencies resolve", False, str(exc))
    return Check("dependencies resolve", True, ", ".join(f"{n} {v}" for n, v in result.pins().items()))


def _sandboxed_groups(apx: Apx) -> bool:
    """Whether any wheel has providers or hooks, the entry points apt-sandbox validates."""
    for wheel in apx.wheels:
        eps = _entry_points(wheel, _wheel_names(wheel))
        if any(eps.has_section(g) and eps.options(g) for g in _LOAD_GROUPS[:2]):
            return True
    return False


def sandbox_check(archive: Path, apx: Apx, timeout: float = SANDBOX_WALL_SECONDS) -> Check:
    """Import, contract-check and self-test every provider in apt-sandbox, in a child process."""
    if not _sandboxed_groups(apx):
        return Check(SANDBOX_CHECK, True, "nothing to validate: the plugin only adds apt commands")
    cmd = [sys.executable, "-m", "apt_marketplace.client.sandbox_check", str(archive)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Check(SANDBOX_CHECK, False, f"no verdict within {timeout:.0f} s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    try:
        verdict = json.loads(lines[-1])
        return Check(SANDBOX_CHECK, bool(verdict["ok"]), str(verdict["summary"])[:2000])
    except (IndexError, ValueError, KeyError, TypeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Check(SANDBOX_CHECK, False, f"the sandbox check failed: {tail[:500]}")


def run_checks(
    apx: Apx, archive: Path, catalogue: Catalogue | None, sandbox: bool, on_result: Callable[[Check], None] | None = None
) -> list[Check]:
    """Every check in order; the sandbox runs only when the cheap checks passed."""
    results = archive_checks(apx)
    results.append(dependency_check(apx, catalogue))
    if on_result:
        for c in results:
            on_result(c)
    if sandbox:
        if all(c.ok for c in results):
            c = sandbox_check(archive, apx)
        else:
            c = Check(SANDBOX_CHECK, False, "not run: an earlier check failed")
        results.append(c)
        if on_result:
            on_result(c)
    return results
