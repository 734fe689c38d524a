"""Which plugin distributions may run in the user's own process.

First-party distributions (apt-core and the ``apt-plugin-*`` packages released from this
repository) and those the user marked trusted (``apt market trust NAME``) run in-process.
Everything else, including whatever ``apt market install`` put in the environment, is
untrusted until marked: a run that would import it goes to apt-sandbox (:mod:`apt.jail`).

The decision reads package metadata only (entry points and their distributions), so
deciding never imports the code it is deciding about.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import IO

from apt.atomic import atomic_write
from apt.errors import AptError
from apt.home import apt_home

#: Distributions released from this repository. Matched by exact name, so a third-party
#: ``apt-plugin-something`` is not first-party because of its prefix.
FIRST_PARTY = frozenset({
    "apt-core", "apt-sandbox", "apt-marketplace",
    "apt-plugin-align", "apt-plugin-bpe", "apt-plugin-flash", "apt-plugin-moe", "apt-plugin-monitor", "apt-plugin-quant",
    "apt-plugin-report", "apt-plugin-retriever", "apt-plugin-tune", "apt-plugin-tva", "apt-plugin-voter",
    "apt-plugin-vision", "apt-plugin-audio",
})
STORE_FILE = "trust.json"


def canonical(name: str) -> str:
    """The normalized distribution name (PEP 503), so ``Apt_Plugin.X`` and ``apt-plugin-x`` are one entry."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def first_party(distribution: str) -> bool:
    """One of this repository's distributions, as installed from the repository or a package index.

    A wheel file installed by path (what ``apt market install`` does with the wheels it downloaded
    and validated; pip records it as ``archive_info`` in ``direct_url.json``) is the marketplace's
    copy, untrusted like any other plugin from there, whatever name it carries.
    """
    if canonical(distribution) not in FIRST_PARTY:
        return False
    try:
        record = metadata.distribution(distribution).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return True
    try:
        return not (record and "archive_info" in json.loads(record))
    except ValueError:
        return False


class TrustStore:
    """The user's trusted distributions, ``APT_HOME/trust.json``.

    Written atomically under a lock, so concurrent ``trust``/``untrust`` commands never lose
    an entry and a crash never leaves a torn file. A sandboxed run cannot change it: the jail
    gets only ``APT_HOME/cache`` writable.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or apt_home() / STORE_FILE

    def names(self) -> list[str]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            names = data["trusted"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise AptError(f"{self.path} is damaged ({err}); fix or delete it (then trust again)") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise AptError(f"{self.path} is damaged (\"trusted\" must be a list of names); fix or delete it")
        return sorted({canonical(n) for n in names})

    def add(self, name: str) -> bool:
        """Mark ``name`` trusted; False if it already was."""
        with self._locked():
            names = set(self.names())
            if canonical(name) in names:
                return False
            self._write(names | {canonical(name)})
        return True

    def remove(self, name: str) -> bool:
        """Stop trusting ``name``; False if it was not marked."""
        with self._locked():
            names = set(self.names())
            if canonical(name) not in names:
                return False
            self._write(names - {canonical(name)})
        return True

    def _write(self, names: set[str]) -> None:
        text = json.dumps({"trusted": sorted(names)}, indent=2) + "\n"

        def write(fh: IO[bytes]) -> None:
            fh.write(text.encode("utf-8"))

        atomic_write(self.path, write)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def is_trusted(distribution: str, store: TrustStore | None = None) -> bool:
    """Whether code from ``distribution`` may run in this process."""
    return first_party(distribution) or canonical(distribution) in (store or TrustStore()).names()
