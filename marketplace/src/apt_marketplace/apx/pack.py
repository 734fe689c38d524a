"""Packing: a plugin project's wheel plus a manifest read from its pyproject.toml."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..fsutil import atomic_writer
from ..semver import InvalidVersion, from_pep440
from .errors import ApxError
from .manifest import MANIFEST, SIGNATURE, Manifest
from .reader import read_apx
from .signing import sign

__all__ = ["manifest_from_project", "pack", "write_apx"]

_FIXED_DATE = (2020, 1, 1, 0, 0, 0)


def _zinfo(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
    info.compress_type = compress
    info.create_system = 3
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


def write_apx(
    out_path: Path,
    manifest: Manifest,
    wheels: Mapping[str, bytes],
    signing_key: Ed25519PrivateKey | None = None,
) -> Path:
    """Write deterministically (fixed timestamps and order) so re-packing the same wheel gives
    the same bytes, which is what makes a repeated publish a harmless no-op."""
    files = {f"wheels/{fn}": hashlib.sha256(body).hexdigest() for fn, body in wheels.items()}
    manifest = Manifest.parse({**manifest.model_dump(), "files": files})
    raw = manifest.to_json()
    out_path = Path(out_path)
    with atomic_writer(out_path) as fh:
        with zipfile.ZipFile(fh, "w") as zf:
            zf.writestr(_zinfo(MANIFEST, zipfile.ZIP_DEFLATED), raw)
            if signing_key is not None:
                zf.writestr(_zinfo(SIGNATURE, zipfile.ZIP_STORED), sign(raw, signing_key))
            for fn in sorted(wheels):
                zf.writestr(_zinfo(f"wheels/{fn}", zipfile.ZIP_STORED), wheels[fn])
    return out_path


def _project_table(project_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    path = project_dir / "pyproject.toml"
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ApxError(f"{project_dir} has no pyproject.toml; point pack at a plugin project directory") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ApxError(f"{path} is not valid TOML: {exc}") from None
    project = doc.get("project")
    if not isinstance(project, dict):
        raise ApxError(f"{path} has no [project] table")
    tool = doc.get("tool", {}).get("apt")
    if not isinstance(tool, dict):
        raise ApxError(f"{path} has no [tool.apt] table; add one with provides, requires, core and sandbox")
    return project, tool


def manifest_from_project(project_dir: Path) -> Manifest:
    project, tool = _project_table(Path(project_dir))
    unknown = set(tool) - {"provides", "requires", "core", "sandbox"}
    if unknown:
        raise ApxError(f"[tool.apt] has unknown keys: {', '.join(sorted(unknown))}")
    name = project.get("name")
    version = project.get("version")
    if not isinstance(version, str):
        raise ApxError("[project] version must be static in pyproject.toml (dynamic versions are not packed)")
    try:
        semver = str(from_pep440(version))
    except InvalidVersion as exc:
        raise ApxError(str(exc)) from None
    entry_points = project.get("entry-points", {}).get("apt.providers", {})
    declared = sorted(entry_points) if isinstance(entry_points, dict) else []
    provides = tool.get("provides", declared)
    if not isinstance(provides, list):
        raise ApxError("[tool.apt] provides must be a list of 'kind.name'")
    if declared and sorted(provides) != declared:
        raise ApxError(
            f"[tool.apt] provides {sorted(provides)} differs from the apt.providers entry points {declared}"
        )
    if "core" not in tool:
        raise ApxError("[tool.apt] needs core = \"<range of apt-core>\", for example core = \"^2.0\"")
    data = {
        "name": name,
        "version": semver,
        "summary": project.get("description", ""),
        "provides": provides,
        "requires": tool.get("requires", {}),
        "core": tool["core"],
        "python": project.get("requires-python", ""),
        "sandbox": tool.get("sandbox", "allowed"),
    }
    return Manifest.parse(data)


def _build_wheel(project_dir: Path, dest: Path, build_isolation: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dest)]
    if not build_isolation:
        cmd.append("--no-build-isolation")
    cmd.append(str(project_dir))
    env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "1577836800")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise ApxError("building the wheel failed:\n" + "\n".join(tail))
    built = sorted(dest.glob("*.whl"))
    if len(built) != 1:
        raise ApxError(f"expected one wheel from {project_dir}, got {[p.name for p in built]}")
    return built[0]


def pack(
    project_dir: Path,
    out_dir: Path,
    *,
    build_isolation: bool = True,
    signing_key: Ed25519PrivateKey | None = None,
) -> Path:
    """Build the project's wheel and wrap it with a manifest read from pyproject.toml."""
    project_dir = Path(project_dir).resolve()
    manifest = manifest_from_project(project_dir)
    with tempfile.TemporaryDirectory(prefix="apx-wheel-") as tmp:
        wheel = _build_wheel(project_dir, Path(tmp), build_isolation)
        wheels = {wheel.name: wheel.read_bytes()}
    out = Path(out_dir) / f"{manifest.canonical_name}-{manifest.version}.apx"
    write_apx(out, manifest, wheels, signing_key)
    read_apx(out)
    return out
