import json

import numpy as np
import pytest
import torch

from apt.data import Batches, load_corpus, sequential_windows
from apt.errors import AptError
from apt.profile import DataConfig


def test_char_corpus_split_and_memmap_cache(tmp_path, apt_home):
    path = tmp_path / "c.txt"
    path.write_text("abcdefghij" * 50)
    corpus = load_corpus(DataConfig(train_path=str(path), val_fraction=0.2), block_size=8)
    assert corpus.tokenizer.chars == "abcdefghij"
    assert len(corpus.train) == 400 and len(corpus.val) == 100
    assert isinstance(corpus.train.base, np.memmap) or isinstance(corpus.train, np.memmap)
    assert corpus.tokenizer.decode(corpus.train[:3].tolist()) == "abc"
    cached = list((apt_home / "cache" / "tokens").glob("*.bin"))
    assert len(cached) == 1 and cached[0].stat().st_size == 500
    again = load_corpus(DataConfig(train_path=str(path), val_fraction=0.2), block_size=8)
    assert np.array_equal(again.val, corpus.val)


def test_jsonl_and_byte_tokenizer(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"doc {i} é"}) for i in range(40)))
    corpus = load_corpus(DataConfig(train_path=str(path), tokenizer="byte", jsonl_field="body"), block_size=4)
    assert corpus.tokenizer.vocab_size == 256
    assert corpus.tokenizer.decode(corpus.train[:9].tolist()) == "doc 0 é\n"


@pytest.mark.parametrize("content, match", [
    ('{"text": 1}\n', r"docs.jsonl:1: 'text' must be a string"),
    ('not json\n', r"docs.jsonl:1: expected a JSON object with a string 'text'"),
])
def test_bad_jsonl_names_the_line(tmp_path, content, match):
    path = tmp_path / "docs.jsonl"
    path.write_text(content)
    with pytest.raises(AptError, match=match):
        load_corpus(DataConfig(train_path=str(path)), block_size=4)


def test_missing_and_too_small(tmp_path):
    with pytest.raises(AptError, match=r"data.train_path: file '.*nope.txt' not found"):
        load_corpus(DataConfig(train_path=str(tmp_path / "nope.txt")), block_size=8)
    small = tmp_path / "s.txt"
    small.write_text("abc")
    with pytest.raises(AptError, match=r"fewer than block_size \+ 2"):
        load_corpus(DataConfig(train_path=str(small)), block_size=8)


def test_batches_are_a_function_of_step_and_rank():
    tokens = np.arange(1000) % 251
    a = Batches(tokens, 8, 4, seed=1)
    x1, y1 = a.get(5, 0)
    x2, _ = Batches(tokens, 8, 4, seed=1).get(5, 0)
    assert torch.equal(x1, x2) and torch.equal(y1[:, :-1], x1[:, 1:])
    assert not torch.equal(a.get(6, 0)[0], x1)
    assert not torch.equal(Batches(tokens, 8, 4, seed=1, rank=1, world=2).get(5, 0)[0], x1)


def test_two_ranks_together_see_the_one_rank_batch():
    tokens = np.arange(5000) % 251
    whole, _ = Batches(tokens, 8, 6, seed=3).get(7, 1)
    halves = [Batches(tokens, 8, 3, seed=3, rank=r, world=2).get(7, 1)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)


def test_sequential_windows_cover_every_target_once():
    windows = list(sequential_windows(np.zeros(21), 8))
    assert windows == [(0, 8), (8, 8), (16, 4)]
    assert sum(length for _, length in windows) == 20
