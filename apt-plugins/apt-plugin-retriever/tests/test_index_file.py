import json
import zipfile

import pytest

from apt.errors import AptError
from apt.providers import Document
from apt.registry import default_registry
from apt_plugin_retriever import bm25 as bm25_module
from apt_plugin_retriever.indexfile import FORMAT, FORMAT_VERSION, is_index, read_header

DOCS = [Document("the cat sat on the mat", "a:1"), Document("the dog sat", "b:1")]


def bm25(options=None):
    return default_registry().make("retriever", "bm25", options or {}).build()


def rewrite_header(path, **changes):
    """Copy of the archive at ``path`` with header fields changed."""
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    header = json.loads(members["header.json"])
    for key, value in changes.items():
        target = header
        *parents, last = key.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value
    members["header.json"] = json.dumps(header).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.fixture
def index_path(tmp_path):
    path = tmp_path / "x.idx"
    bm25().build_index(DOCS, path, extra={"documents": 2, "source": {"docs": "somewhere"}})
    return path


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_header_is_versioned_and_records_how_it_was_built(index_path):
    header = read_header(index_path)
    assert header["format"] == FORMAT == "apt-retrieval-index" and header["format_version"] == FORMAT_VERSION == 1
    assert header["retriever"] == "retriever.bm25" and header["documents"] == 2 and header["passages"] == 2
    assert header["bm25"]["tokenizer"] == "words" and header["bm25"]["tokenizer_version"] == 1
    assert header["source"] == {"docs": "somewhere"} and header["apt_plugin_retriever"] == "1.0.0"
    assert is_index(index_path) and not is_index(index_path.parent / "nope")


def test_missing_file(tmp_path):
    with pytest.raises(AptError) as err:
        bm25().open(tmp_path / "missing.idx")
    assert "not found; build one with: apt index build --docs DIR_OR_FILE --out" in one_line(err)


@pytest.mark.parametrize("content", [b"just some text\n", b"", b"PK\x03\x04broken"])
def test_not_an_index(tmp_path, content):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(AptError) as err:
        bm25().open(path)
    assert "is not an APT retrieval index" in one_line(err)


def test_zip_that_is_not_an_index(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("header.json", json.dumps({"format": "something-else"}))
    with pytest.raises(AptError, match="is not an APT retrieval index"):
        bm25().open(path)


def test_newer_format_is_refused(index_path):
    rewrite_header(index_path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(AptError) as err:
        bm25().open(index_path)
    assert "index format version 2, newer than apt-plugin-retriever 1.0.0 reads (up to 1)" in one_line(err)
    assert "pip install -U apt-plugin-retriever" in str(err.value)


def test_other_retriever_is_refused(index_path):
    rewrite_header(index_path, retriever="retriever.dense")
    with pytest.raises(AptError) as err:
        bm25().open(index_path)
    assert "was built with retriever.dense; pass --retriever dense" in one_line(err)


def test_other_tokenizer_is_refused(index_path):
    with pytest.raises(AptError) as err:
        bm25({"tokenizer": "char3"}).open(index_path)
    message = one_line(err)
    assert "was built with tokenizer 'words', not 'char3'" in message
    assert "rebuild it with apt index build --set tokenizer=char3" in message and "use tokenizer=words" in message


def test_other_tokenizer_version_is_refused(index_path, monkeypatch):
    monkeypatch.setitem(bm25_module.TOKENIZERS, "words", (2, bm25_module.tokenize_words))
    with pytest.raises(AptError) as err:
        bm25().open(index_path)
    assert "tokenizer 'words' version 1, this apt-plugin-retriever has version 2; rebuild it" in one_line(err)


def test_unknown_tokenizer_is_refused(index_path):
    rewrite_header(index_path, **{"bm25.tokenizer": "sentencepiece"})
    with pytest.raises(AptError, match="tokenizer 'sentencepiece', which this apt-plugin-retriever does not know"):
        bm25().open(index_path)


def test_corrupt_archive_is_refused(index_path):
    with zipfile.ZipFile(index_path) as zf:
        members = {name: zf.read(name) for name in zf.namelist() if name != "postings_doc.npy"}
    with zipfile.ZipFile(index_path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(AptError) as err:
        bm25().open(index_path)
    assert "is corrupt" in one_line(err) and "rebuild it" in str(err.value)


def test_rebuild_replaces_the_file_atomically(index_path):
    before = read_header(index_path)
    bm25().build_index([Document("a new world", "n:1")], index_path)
    after = read_header(index_path)
    assert before["passages"] == 2 and after["passages"] == 1
    assert sorted(p.name for p in index_path.parent.iterdir()) == ["x.idx"]
