"""Running a plugin's pure data hook in-process or, when its manifest asks, in apt-sandbox.

A data hook takes and returns JSON-shaped data (``"module:function"``), so it can cross a
process boundary without pickle. A provider whose package declares ``sandbox = "required"``
(mirrored by the class attribute ``Provider.sandbox``) always runs it in a sandbox worker; any
provider's hook can be sent there on request. The core never imports apt-sandbox otherwise.
"""

from __future__ import annotations

import importlib
from typing import Any

from apt.errors import AptError, RunError
from apt.providers import Provider


def call_data_hook(provider: Provider, target: str, request: Any, *, sandboxed: bool = False) -> Any:
    """``target(request)``, in a sandbox if ``sandboxed`` or the provider requires one."""
    key = f"{provider.kind}.{provider.name}"
    if not (sandboxed or provider.sandbox == "required"):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)(request)
    try:
        from apt_sandbox import Sandbox
        from apt_sandbox.limits import DATA_HOOK
    except ImportError:
        why = "its package requires a sandbox" if provider.sandbox == "required" else "--sandbox was given"
        raise AptError(f"{key} must run in a sandbox ({why}): pip install apt-sandbox") from None
    result = Sandbox(DATA_HOOK, network=False).call(target, request)
    if result.status != "ok":
        last = (result.traceback or result.detail or "").strip().splitlines()
        raise RunError(f"{key} failed in the sandbox ({result.status}): {last[-1] if last else 'no detail'}")
    return result.value
