"""The public surface: ``apt.__all__`` is what plugins may use, it resolves, and it costs no torch."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import apt

ROOT = Path(__file__).resolve().parents[2]


def test_every_exported_name_resolves_to_a_public_object_of_the_kernel():
    exported = [name for name in apt.__all__ if name != "__version__"]
    assert len(exported) == len(set(exported)), "a name is exported twice"
    for name in exported:
        module = apt._EXPORTS[name]
        assert module.startswith("apt.") and not name.startswith("_"), (name, module)
        assert getattr(apt, name) is getattr(importlib.import_module(module), name), f"apt.{name} is not {module}.{name}"
    assert set(dir(apt)) >= set(apt.__all__)


def test_unknown_names_fail_like_a_module_attribute():
    try:
        apt.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "module 'apt' has no attribute 'no_such_name'" in str(err)
    else:
        raise AssertionError("apt.no_such_name resolved")


def test_contract_names_do_not_import_torch():
    code = ("import sys; from apt import (AttentionProvider, FFNProvider, ModelDims, option, hookimpl, TrainerView, "
            "ConfigError, Switchable, parse_assignments); sys.exit(3 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_first_party_plugins_import_only_the_public_surface():
    """Plugins import ``apt`` (and ``apt.testing`` in tests), never the kernel's modules behind it."""
    offenders = []
    for path in sorted(ROOT.glob("apt-plugins/*/src/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.startswith("apt.") and not n.startswith("apt.testing")]
    assert not offenders, "\n".join(offenders)
