"""apt-sandbox: run untrusted plugin code in a jailed, resource-limited subprocess.

Public names load lazily so that the launcher (which imports
``apt_sandbox.isolation`` with no site-packages) stays cheap.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False

__version__ = "0.1.0"

_EXPORTS = {
    "Sandbox": "apt_sandbox.sandbox",
    "check": "apt_sandbox.sandbox",
    "Worker": "apt_sandbox.worker",
    "Limits": "apt_sandbox.limits",
    "Result": "apt_sandbox.result",
    "STATUSES": "apt_sandbox.result",
    "SandboxError": "apt_sandbox.result",
    "IsolationError": "apt_sandbox.result",
    "RawTensor": "apt_sandbox.codec",
    "LAYERS": "apt_sandbox.isolation",
    "validate_plugin": "apt_sandbox.validate",
    "ValidationReport": "apt_sandbox.validate",
    "EntryReport": "apt_sandbox.validate",
}

__all__ = [
    "LAYERS",
    "STATUSES",
    "EntryReport",
    "IsolationError",
    "Limits",
    "RawTensor",
    "Result",
    "Sandbox",
    "SandboxError",
    "ValidationReport",
    "Worker",
    "__version__",
    "check",
    "validate_plugin",
]

if TYPE_CHECKING:
    from apt_sandbox.codec import RawTensor
    from apt_sandbox.isolation import LAYERS
    from apt_sandbox.limits import Limits
    from apt_sandbox.result import STATUSES, IsolationError, Result, SandboxError
    from apt_sandbox.sandbox import Sandbox, check
    from apt_sandbox.validate import EntryReport, ValidationReport, validate_plugin
    from apt_sandbox.worker import Worker


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'apt_sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
