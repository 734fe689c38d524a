"""The index file: one zip archive, written atomically, read without pickle.

Members::

    header.json          {"format": "apt-retrieval-index", "format_version": 1, "retriever": ..., ...}
    <name>.npy           numeric arrays (``np.lib.format``, read with ``allow_pickle=False``)
    texts.utf8           passage texts, concatenated UTF-8 (deflated); ``texts_offsets.npy`` slices it
    sources.utf8         passage sources, likewise with ``sources_offsets.npy``

``header.json`` is stored first so ``apt index info`` and the mismatch checks read it without
loading the arrays. Passage texts stay encoded until a search returns them.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from apt import AptError, atomic_write

FORMAT = "apt-retrieval-index"
FORMAT_VERSION = 1
HEADER = "header.json"


def build_hint(path: Path | str) -> str:
    return f"build one with: apt index build --docs DIR_OR_FILE --out {path}"


class TextStore:
    """Strings kept as one UTF-8 blob plus offsets; decoded one at a time."""

    def __init__(self, blob: bytes, offsets: np.ndarray) -> None:
        self.blob = blob
        self.offsets = offsets

    @classmethod
    def pack(cls, items: Sequence[str]) -> tuple[bytes, np.ndarray]:
        encoded = [s.encode("utf-8") for s in items]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return b"".join(encoded), offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[int(self.offsets[i]):int(self.offsets[i + 1])].decode("utf-8")


def write_index(out: Path, header: dict[str, Any], arrays: dict[str, np.ndarray], texts: Sequence[str],
                sources: Sequence[str]) -> dict[str, Any]:
    """Write the archive atomically; return the full header (format fields and counts added)."""
    from apt_plugin_retriever import __version__

    header = {"format": FORMAT, "format_version": FORMAT_VERSION, **header,
              "passages": len(texts), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "apt_plugin_retriever": __version__}
    text_blob, text_offsets = TextStore.pack(texts)
    source_blob, source_offsets = TextStore.pack(sources)
    arrays = {**arrays, "texts_offsets": text_offsets, "sources_offsets": source_offsets}

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr(HEADER, json.dumps(header, indent=1, sort_keys=True))
            for name, array in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            for name, blob in (("texts.utf8", text_blob), ("sources.utf8", source_blob)):
                zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), blob,
                            compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)

    atomic_write(Path(out), write)
    return header


def read_header(path: Path | str) -> dict[str, Any]:
    """The header of an index; refuses a missing file, a non-index and a newer format in one line."""
    path = Path(path)
    if not path.exists():
        raise AptError(f"index {str(path)!r} not found; {build_hint(path)}")
    if path.is_dir():
        raise AptError(f"index {str(path)!r} is a directory, not an index file; {build_hint(path / 'index.apt')}")
    not_index = f"{path} is not an APT retrieval index; {build_hint('INDEX')}"
    try:
        with zipfile.ZipFile(path) as zf:
            header = json.loads(zf.read(HEADER).decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, json.JSONDecodeError, EOFError):
        raise AptError(not_index) from None
    except OSError as err:
        raise AptError(f"cannot read index {path}: {err.strerror or err}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise AptError(not_index)
    version = header.get("format_version")
    if not isinstance(version, int):
        raise AptError(not_index)
    if version > FORMAT_VERSION:
        from apt_plugin_retriever import __version__

        raise AptError(f"{path} has index format version {version}, newer than apt-plugin-retriever "
                       f"{__version__} reads (up to {FORMAT_VERSION}); upgrade: pip install -U apt-plugin-retriever")
    return header


def is_index(path: Path | str) -> bool:
    """Whether ``path`` is an index file of any format version (so overwriting it loses no user data)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(HEADER).decode("utf-8")).get("format") == FORMAT
    except (OSError, zipfile.BadZipFile, KeyError, UnicodeDecodeError, ValueError, AttributeError, EOFError):
        return False


def check_retriever(path: Path | str, header: dict[str, Any], name: str) -> None:
    """Refuse an index built by another retriever, naming the flag that opens it."""
    built = header.get("retriever")
    if built != f"retriever.{name}":
        other = str(built).removeprefix("retriever.")
        raise AptError(f"{path} was built with {built}; pass --retriever {other} "
                       f"(or rebuild it with apt index build --retriever {name})")


def read_index(path: Path | str, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray], TextStore, TextStore]:
    """Header (checked for retriever ``name``), arrays, texts and sources of an index."""
    path = Path(path)
    header = read_header(path)
    check_retriever(path, header, name)
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = {}
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    with zf.open(info) as member:
                        arrays[info.filename[:-4]] = np.lib.format.read_array(member, allow_pickle=False)
            texts = TextStore(zf.read("texts.utf8"), arrays.pop("texts_offsets"))
            sources = TextStore(zf.read("sources.utf8"), arrays.pop("sources_offsets"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as err:
        raise AptError(f"{path} is corrupt ({type(err).__name__}: {' '.join(str(err).split())[:80]}); rebuild it with apt index build "
                       f"--retriever {name} --docs DIR_OR_FILE --out {path}") from None
    n = header.get("passages")
    if len(texts) != n or len(sources) != n:
        raise AptError(f"{path} is corrupt (header says {n} passages, found {len(texts)}); rebuild it")
    return header, arrays, texts, sources
