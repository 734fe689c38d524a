"""Fixtures for the retriever tests: tiny random BERT models on disk (``apt_env`` comes from apt.testing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORDS = ("the a of and to in is it that was for on with as his he be at by had not are but from or have an they "
         "which one you were her all she there would their we him been has when who will more no if out so said "
         "what up its about into than them can only other new some could time these two may then do first any my "
         "now such like our over man me even most made after also did many before must through back years where "
         "much your way well down should because each just those people cat dog sat mat king queen").split()


def make_tiny_bert(path: Path, seed: int = 0, pooling: str | None = "mean") -> Path:
    """A random 1-layer BERT with a word-level vocabulary, saved like a sentence-transformers model."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    import inspect

    # transformers 5 takes the vocabulary as ``vocab``; 4.x as ``vocab_file``
    key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    tokenizer = BertTokenizerFast(**{key: str(path / "vocab.txt")}, do_lower_case=True)
    assert tokenizer.tokenize("The cat") == ["the", "cat"], "the test vocabulary was not loaded"
    tokenizer.save_pretrained(str(path))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(str(path))
    if pooling is not None:
        (path / "1_Pooling").mkdir(exist_ok=True)
        (path / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False}))
        (path / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny_bert", seed=0)


@pytest.fixture(scope="session")
def other_bert(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "other_bert", seed=1)


@pytest.fixture(scope="session")
def make_bert():
    """``make_bert(path, seed=0, pooling="mean")`` (tests cannot import conftest: it is ambiguous)."""
    pytest.importorskip("transformers")
    return make_tiny_bert
