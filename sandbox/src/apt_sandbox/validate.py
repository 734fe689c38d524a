"""Validate an unpacked plugin wheel inside the sandbox.

The parent never imports the plugin: ``inspect_distribution`` runs in the jail
and returns plain data, which the parent re-checks field by field before
building the report (a hostile plugin controls everything it sends).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

from apt_sandbox.limits import PLUGIN_VALIDATION, Limits

GROUPS = ("apt.providers", "apt.plugins")
_DETAIL_CAP = 20_000


@dataclass(frozen=True)
class EntryReport:
    """One entry point: did it load, validate and pass its self-test."""

    group: str
    name: str
    value: str
    status: str  # "ok" | "error"
    detail: str = ""


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of ``validate_plugin``; ``status`` is the sandbox run status."""

    ok: bool
    distribution: str
    version: str | None
    status: str
    entries: list[EntryReport] = field(default_factory=list)
    isolation: dict[str, Any] = field(default_factory=dict)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_entry(group: str, name: str, obj: Any) -> str:
    """Check one loaded entry against apt's plugin contract; returns the self-test message, raises on failure.

    Runs in the jail, where the plugin's own dependency apt-core is importable: providers go
    through the core's one contract check (the same the registry applies) and their
    ``self_test()``; hook-only plugins must register cleanly against apt's hookspecs.
    """
    try:
        from apt.plugins import PluginHost
        from apt.providers import check_provider_class
    except ImportError:
        raise RuntimeError("apt-core is not importable where the plugin is validated; "
                           "install apt-core next to the plugin") from None
    if group == "apt.plugins":
        PluginHost().register(obj, name)
        return "hooks match apt.hookspecs"
    if not isinstance(obj, type):
        raise TypeError(f"provider entry {name!r} must point at a class, got {type(obj).__name__}")
    cls = check_provider_class(obj, name)
    outcome = cls(cls.Config()).self_test()
    return "no self-test" if outcome is None else str(outcome)[:1000]


def inspect_distribution(args: dict[str, Any]) -> dict[str, Any]:
    """Runs inside the sandbox: load every entry point of one distribution from ``site_dir``."""
    import importlib.metadata as md
    import sys

    site_dir, dist_name = args["site_dir"], args["distribution"]
    sys.path.insert(0, site_dir)
    dists = list(md.distributions(name=dist_name, path=[site_dir]))
    if not dists:
        return {"found": False, "version": None, "entries": []}
    dist = dists[0]
    entries = []
    for ep in dist.entry_points:
        if ep.group not in GROUPS:
            continue
        report = {"group": ep.group, "name": ep.name, "value": ep.value}
        try:
            report["detail"] = _check_entry(ep.group, ep.name, ep.load())
            report["status"] = "ok"
        except (Exception, SystemExit) as exc:
            report["status"] = "error"
            report["detail"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        entries.append(report)
    return {"found": True, "version": dist.version, "entries": entries}


def _text(value: Any, cap: int = _DETAIL_CAP) -> str:
    return value[:cap] if isinstance(value, str) else ""


def validate_plugin(
    site_dir: str | os.PathLike[str],
    distribution: str,
    limits: Limits | None = None,
) -> ValidationReport:
    """Import a plugin, check its providers against apt's contract and run their self-tests, all in the sandbox."""
    from apt_sandbox.sandbox import Sandbox

    site = os.path.abspath(os.fspath(site_dir))
    if not os.path.isdir(site):
        raise FileNotFoundError(f"site_dir {site!r} is not a directory")
    sb = Sandbox(limits or PLUGIN_VALIDATION, expose=[site])
    res = sb.call("apt_sandbox.validate:inspect_distribution", {"site_dir": site, "distribution": distribution})
    iso = dict(res.isolation)
    if res.status != "ok":
        detail = res.detail + ("\n" + res.traceback if res.traceback else "")
        return ValidationReport(False, distribution, None, res.status, [], iso, _text(detail))
    value = res.value if isinstance(res.value, dict) else {}
    if not value.get("found"):
        return ValidationReport(
            False, distribution, None, res.status, [], iso, f"distribution {distribution!r} not found in {site}"
        )
    entries = []
    raw_entries = value.get("entries")
    for raw in raw_entries[:1000] if isinstance(raw_entries, list) else []:
        if not isinstance(raw, dict):
            continue
        status = "ok" if raw.get("status") == "ok" else "error"
        entries.append(
            EntryReport(
                group=_text(raw.get("group"), 200),
                name=_text(raw.get("name"), 200),
                value=_text(raw.get("value"), 500),
                status=status,
                detail=_text(raw.get("detail")),
            )
        )
    version = value.get("version") if isinstance(value.get("version"), str) else None
    ok = bool(entries) and all(e.status == "ok" for e in entries)
    detail = "" if entries else "no apt.providers or apt.plugins entry points"
    return ValidationReport(ok, distribution, version, res.status, entries, iso, detail)
