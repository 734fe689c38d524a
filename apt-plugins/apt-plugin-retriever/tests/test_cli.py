"""``apt index build | search | info`` end to end, through ``python -m apt`` in subprocesses."""

import json
import re

import pytest

from core_cli import assert_one_line_error, run


@pytest.fixture
def docs(tmp_path):
    root = tmp_path / "notes"
    (root / "deep").mkdir(parents=True)
    (root / "training.md").write_text(
        "# Training\n\nResume a run with apt train --resume; the checkpoint keeps the optimizer.\n\n"
        "Gradient accumulation multiplies the effective batch size.\n", encoding="utf-8")
    (root / "deep" / "sampling.txt").write_text(
        "Sampling\nTemperature zero decodes greedily.\n\nTop-k keeps the k most likely tokens.\n", encoding="utf-8")
    (root / "faq.jsonl").write_text(
        json.dumps({"id": "faq-1", "text": "Plugins are discovered from entry points."}) + "\n"
        + json.dumps({"source": "faq-2", "text": "The marketplace verifies sha256 before installing."}) + "\n",
        encoding="utf-8")
    return root


def test_build_search_info_bm25(tmp_path, apt_env, docs):
    built = run(["index", "build", "--docs", "notes", "--out", "notes.idx"], env=apt_env, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "indexed 4 documents from 3 files into 7 passages with retriever.bm25" in built.stdout
    assert re.search(r"built in \d+\.\d\d s; wrote notes\.idx \(\d+\.\d KiB\)", built.stdout), built.stdout

    found = run(["index", "search", "--index", "notes.idx", "--query", "resume the run", "--top-k", "2"],
                env=apt_env, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].startswith("2 passages for 'resume the run' from notes.idx (retriever.bm25, ")
    assert re.match(r"\[1\] score \d+\.\d{4}  notes/training\.md:3$", lines[1]), found.stdout
    assert lines[2] == "    Resume a run with apt train --resume; the checkpoint keeps the optimizer."

    as_json = run(["index", "search", "--index", "notes.idx", "--query", "sha256 marketplace", "--json"],
                  env=apt_env, cwd=tmp_path)
    hits = json.loads(as_json.stdout)
    assert hits[0]["source"] == "faq-2" and hits[0]["rank"] == 1 and hits[0]["score"] > 0

    info = run(["index", "info", "--index", "notes.idx"], env=apt_env, cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in info.stdout.splitlines())
    assert rows["format"] == "apt-retrieval-index" and rows["format_version"] == "1"
    assert rows["retriever"] == "retriever.bm25" and rows["bm25.tokenizer"] == "words"
    assert rows["documents"] == "4" and rows["passages"] == "7" and rows["source.docs"] == "notes"
    header = json.loads(run(["index", "info", "--index", "notes.idx", "--json"], env=apt_env, cwd=tmp_path).stdout)
    assert header["bm25"]["tokenizer_version"] == 1 and header["file"]["bytes"] > 0

    char3 = run(["index", "build", "--docs", "notes/deep/sampling.txt", "--out", "c.idx", "--set", "tokenizer=char3",
                 "--max-chars", "40"], env=apt_env, cwd=tmp_path)
    assert "indexed 1 document from 1 file into 3 passages" in char3.stdout, char3.stderr
    typo = run(["index", "search", "--index", "c.idx", "--query", "temprature", "--top-k", "1"], env=apt_env, cwd=tmp_path)
    assert "notes/deep/sampling.txt:2" in typo.stdout, typo.stdout
    assert run(["index", "--help"], env=apt_env, cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("args, fragment", [
    (["build", "--docs", "missing", "--out", "x.idx"], "--docs 'missing' not found"),
    (["build", "--docs", "notes"], "apt index build: error: the following arguments are required: --out"),
    (["build", "--docs", "notes", "--out", "x.idx", "--retriever", "sparse"], "argument --retriever: invalid choice"),
    (["build", "--docs", "notes", "--out", "x.idx", "--set", "k9=1"], "providers.retriever.bm25.k9: unknown key"),
    (["build", "--docs", "notes", "--out", "x.idx", "--set", "tokenizer=bpe"], "tokenizer: expected one of words, char3"),
    (["build", "--docs", "notes", "--out", "x.idx", "--set", "nokey"], "--set 'nokey': expected KEY=VALUE"),
    (["build", "--docs", "notes", "--out", "notes/training.md"], "exists and is not an APT retrieval index; refusing"),
    (["build", "--docs", "notes", "--out", "x.idx", "--embedding-model", "m"], "--embedding-model applies to --retriever dense"),
    (["build", "--docs", "notes", "--out", "x.idx", "--max-chars", "5"], "--max-chars must be at least 20"),
    (["search", "--index", "nope.idx", "--query", "q"], "index 'nope.idx' not found; build one with: apt index build"),
    (["search", "--index", "notes/training.md", "--query", "q"], "is not an APT retrieval index"),
    (["search", "--index", "ok.idx", "--query", "q", "--top-k", "0"], "--top-k must be >= 1"),
    (["search", "--index", "ok.idx", "--query", "  "], "--query is empty"),
    (["search", "--index", "ok.idx", "--query", "q", "--retriever", "dense"], "was built with retriever.bm25; pass --retriever bm25"),
    (["search", "--index", "ok.idx", "--query", "q", "--set", "tokenizer=char3"], "was built with tokenizer 'words', not 'char3'"),
    (["info", "--index", "notes"], "is a directory, not an index file"),
    ([], "the following arguments are required: build|search|info"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, apt_env, docs, args, fragment):
    if "ok.idx" in args:  # built in-process: the subprocess under test is the search
        from apt.registry import default_registry
        from apt_plugin_retriever.documents import load_documents

        retriever = default_registry().make("retriever", "bm25", {}).build()
        retriever.build_index(load_documents(docs).passages, tmp_path / "ok.idx")
    result = run(["index", *args], env=apt_env, cwd=tmp_path)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "x.idx").exists()


def test_build_and_search_dense(tmp_path, apt_env, docs, tiny_bert):
    built = run(["index", "build", "--docs", "notes", "--out", "d.idx", "--retriever", "dense", "--embedding-model",
                 str(tiny_bert), "--set", "batch_size=2"], env=apt_env, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "into 7 passages with retriever.dense" in built.stdout and built.stderr == ""
    # the retriever and the model come from the index's header; the passage's own text ranks first
    found = run(["index", "search", "--index", "d.idx", "--query", "Top-k keeps the k most likely tokens.",
                 "--top-k", "3", "--json"], env=apt_env, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["source"] == "notes/deep/sampling.txt:4"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and hits[1]["score"] <= hits[0]["score"]
