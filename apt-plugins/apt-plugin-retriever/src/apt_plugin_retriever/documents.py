"""Documents to index: a directory, a text file or a JSONL file, split into passages.

Text (``.txt``, ``.md``, any other single file): paragraphs separated by blank lines; a paragraph
longer than ``max_chars`` is cut at line ends (and a line longer than that at spaces) into
chunks of at most ``max_chars``. Each passage's source is ``path:LINE`` of its first line.

JSONL: one JSON object per line with a string ``text`` and optional ``source`` or ``id``; the
source is ``source``, else ``id``, else ``path:LINE``; a long text is chunked like a paragraph,
its parts getting ``#2``, ``#3``... after the source.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from apt import AptError, Document

SUFFIXES = (".txt", ".md", ".jsonl")
DEFAULT_MAX_CHARS = 600


@dataclass
class Loaded:
    """Passages ready for ``build_index`` and what they came from."""

    passages: list[Document]
    files: int
    documents: int


def load_documents(path: Path | str, max_chars: int = DEFAULT_MAX_CHARS) -> Loaded:
    """Passages of ``path`` (directory, text file or JSONL file); AptError naming the fix on bad input."""
    path = Path(path)
    if max_chars < 20:
        raise AptError(f"--max-chars must be at least 20, got {max_chars}")
    if not path.exists():
        raise AptError(f"--docs {str(path)!r} not found; pass a directory of .txt/.md/.jsonl files, a text "
                       f"file or a JSONL file")
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise AptError(f"--docs {path}: no *.txt, *.md or *.jsonl files under this directory")
    else:
        files = [path]
    passages: list[Document] = []
    documents = 0
    for file in files:
        if file.suffix == ".jsonl":
            for doc in _jsonl(file, max_chars):
                documents += 1
                passages.extend(doc)
        else:
            documents += 1
            passages.extend(_text_file(file, max_chars))
    if not passages:
        raise AptError(f"--docs {path}: found no text to index (the files are empty)")
    return Loaded(passages, len(files), documents)


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise AptError(f"{file} is not UTF-8 text ({err.reason} at byte {err.start}); convert it or leave it "
                       f"out of --docs") from None
    except OSError as err:
        raise AptError(f"cannot read {file}: {err.strerror or err}") from None


def chunk_lines(lines: list[tuple[int, str]], max_chars: int) -> Iterator[tuple[int, str]]:
    """Join numbered lines into (first line number, text) chunks of at most ``max_chars``."""
    pieces: list[tuple[int, str]] = []
    for lineno, line in lines:
        while len(line) > max_chars:
            cut = line.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            pieces.append((lineno, line[:cut].rstrip()))
            line = line[cut:].lstrip()
        if line:
            pieces.append((lineno, line))
    buf: list[str] = []
    start, size = 0, 0
    for lineno, piece in pieces:
        if buf and size + 1 + len(piece) > max_chars:
            yield start, "\n".join(buf)
            buf, size = [], 0
        if not buf:
            start = lineno
        buf.append(piece)
        size += len(piece) + (1 if len(buf) > 1 else 0)
    if buf:
        yield start, "\n".join(buf)


def split_paragraphs(text: str) -> Iterator[list[tuple[int, str]]]:
    """Blank-line separated paragraphs as lists of (1-based line number, line without trailing space)."""
    para: list[tuple[int, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.rstrip()
        if line.strip():
            para.append((lineno, line))
        elif para:
            yield para
            para = []
    if para:
        yield para


def _text_file(file: Path, max_chars: int) -> Iterator[Document]:
    for para in split_paragraphs(_read(file)):
        for lineno, text in chunk_lines(para, max_chars):
            yield Document(text, f"{file}:{lineno}")


def _jsonl(file: Path, max_chars: int) -> Iterator[list[Document]]:
    for lineno, line in enumerate(_read(file).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise AptError(f"{file}:{lineno}: not valid JSON ({err.msg}); each line must be an object with a "
                           f"string 'text'") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise AptError(f"{file}:{lineno}: expected a JSON object with a string 'text' (optional 'id', "
                           f"'source')")
        source = record.get("source", record.get("id"))
        source = f"{file}:{lineno}" if source is None or source == "" else str(source)
        lines = [(lineno, part) for part in record["text"].splitlines() if part.strip()]
        chunks = [text for _, text in chunk_lines([(n, s.rstrip()) for n, s in lines], max_chars)]
        yield [Document(text, source if i == 0 else f"{source}#{i + 1}") for i, text in enumerate(chunks)]
