"""`python -m apt_marketplace.client.sandbox_check ARCHIVE`: the sandbox half of the publish
checks, in its own process so the server never imports apt-core, apt-sandbox or plugin code.
Prints one JSON line, {"ok": bool, "summary": str}."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from ..apx.errors import ApxError
from ..apx.reader import read_apx
from .sandboxing import unpack_wheel, validate_in_sandbox


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(json.dumps({"ok": False, "summary": "usage: python -m apt_marketplace.client.sandbox_check ARCHIVE"}))
        return 2
    try:
        apx = read_apx(Path(argv[0]))
        with tempfile.TemporaryDirectory(prefix="apt-check-") as tmp:
            site = Path(tmp) / "site"
            site.mkdir()
            for wheel in apx.wheels:
                unpack_wheel(wheel, site)
            verdict = validate_in_sandbox(site, apx.manifest.canonical_name)
    except ApxError as exc:
        print(json.dumps({"ok": False, "summary": str(exc)}))
        return 1
    print(json.dumps({"ok": verdict.ok, "summary": verdict.summary}))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
