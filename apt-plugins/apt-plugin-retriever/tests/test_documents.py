import json

import pytest

from apt.errors import AptError
from apt_plugin_retriever.documents import chunk_lines, load_documents


def test_directory_paragraphs_sources_and_order(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / ".git").mkdir()
    (docs / "b.txt").write_text("First para line one\nline two\n\n\n  \nSecond para\n", encoding="utf-8")
    (docs / "a.md").write_text("# Title\n\nBody text.\n", encoding="utf-8")
    (docs / "sub" / "c.jsonl").write_text(
        json.dumps({"text": "record one", "id": 7}) + "\n\n"
        + json.dumps({"text": "record two", "source": "manual p.3"}) + "\n"
        + json.dumps({"text": "record three"}) + "\n", encoding="utf-8")
    (docs / "skip.py").write_text("print('not indexed')\n")
    (docs / ".git" / "x.txt").write_text("hidden\n")
    loaded = load_documents(docs)
    assert (loaded.files, loaded.documents) == (3, 5)
    assert [(d.text, d.source) for d in loaded.passages] == [
        ("# Title", f"{docs}/a.md:1"),
        ("Body text.", f"{docs}/a.md:3"),
        ("First para line one\nline two", f"{docs}/b.txt:1"),
        ("Second para", f"{docs}/b.txt:6"),
        ("record one", "7"),
        ("record two", "manual p.3"),
        ("record three", f"{docs}/sub/c.jsonl:4"),
    ]


def test_long_paragraphs_are_chunked_at_line_ends_and_spaces(tmp_path):
    lines = [f"line {i} " + "word " * 8 for i in range(30)]
    path = tmp_path / "long.txt"
    path.write_text("\n".join(lines) + "\n\n" + "x" * 250 + "\n", encoding="utf-8")
    passages = load_documents(path, max_chars=200).passages
    assert all(len(p.text) <= 200 for p in passages)
    joined = "\n".join(p.text for p in passages if not p.text.startswith("x"))
    assert joined == "\n".join(line.rstrip() for line in lines), "chunks keep every line, in order"
    first_lines = [int(p.source.rsplit(":", 1)[1]) for p in passages]
    assert first_lines == sorted(first_lines) and first_lines[0] == 1
    assert [p.text for p in passages if p.text.startswith("x")] == ["x" * 200, "x" * 50]
    assert passages[-1].source == f"{path}:32"


def test_chunk_lines_splits_a_long_line_at_spaces():
    chunks = list(chunk_lines([(3, "alpha beta gamma delta epsilon")], 12))
    assert chunks == [(3, "alpha beta"), (3, "gamma delta"), (3, "epsilon")]


def test_long_jsonl_record_gets_numbered_parts(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "doc-1", "text": "\n".join([f"sentence number {i} here" for i in range(20)])})
                    + "\n", encoding="utf-8")
    loaded = load_documents(path, max_chars=100)
    assert loaded.documents == 1 and len(loaded.passages) > 2
    assert [p.source for p in loaded.passages[:3]] == ["doc-1", "doc-1#2", "doc-1#3"]


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "not found"),
    (lambda d: d.mkdir(), "no *.txt, *.md or *.jsonl files under this directory"),
    (lambda d: (d.mkdir(), (d / "e.txt").write_text("\n\n  \n")), "found no text to index"),
    (lambda d: (d.mkdir(), (d / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')), "bad.jsonl:2: not valid JSON"),
    (lambda d: (d.mkdir(), (d / "bad.jsonl").write_text('{"body": "x"}\n')), "bad.jsonl:1: expected a JSON object"),
    (lambda d: (d.mkdir(), (d / "bin.txt").write_bytes(b"\xff\xfe\x00bad")), "bin.txt is not UTF-8 text"),
])
def test_bad_input_is_one_line(tmp_path, setup, message):
    docs = tmp_path / "docs"
    setup(docs)
    with pytest.raises(AptError) as err:
        load_documents(docs)
    assert message in str(err.value) and "\n" not in str(err.value)
