import math
import random
import zipfile
from collections import Counter

import numpy as np
import pytest

from apt.config import ConfigError
from apt.errors import AptError
from apt.providers import Document, Passage
from apt.registry import default_registry
from apt_plugin_retriever.bm25 import tokenize_char3, tokenize_words, top_k
from apt_plugin_retriever.provider import Bm25Config, Bm25Provider

DOCS = [Document("the cat sat on the mat", "d0"), Document("the dog sat", "d1"), Document("cats and dogs", "d2")]


def bm25(options=None):
    return default_registry().make("retriever", "bm25", options or {}).build()


def test_scores_match_a_hand_computed_example(tmp_path):
    # N = 3, lengths 6, 3, 3 -> avgdl = 4; k1 = 1.5, b = 0.75; query "cat sat".
    # idf(cat) = ln(1 + (3 - 1 + .5) / (1 + .5)) = ln(8/3) = 0.980829   (df 1)
    # idf(sat) = ln(1 + (3 - 2 + .5) / (2 + .5)) = ln(1.6) = 0.470004   (df 2)
    # d0: tf 1, |d| 6: 2.5 / (1 + 1.5 * (.25 + .75 * 6/4)) = 2.5 / 3.0625 = 0.816327 per term
    #     -> (0.980829 + 0.470004) * 0.816327 = 1.184354
    # d1: sat only, |d| 3: 2.5 / (1 + 1.5 * (.25 + .75 * 3/4)) = 2.5 / 2.21875 = 1.126761
    #     -> 0.470004 * 1.126761 = 0.529582
    # d2: no shared term ("cats" is not "cat" for the words tokenizer) -> not returned
    retriever = bm25()
    header = retriever.build_index(DOCS, tmp_path / "x.idx")
    assert header["bm25"]["avgdl"] == 4.0 and header["passages"] == 3
    index = retriever.open(tmp_path / "x.idx")
    hits = index.search("Cat, sat!", 10)
    assert [h.source for h in hits] == ["d0", "d1"]
    assert hits[0].score == pytest.approx(1.184354, abs=1e-5)
    assert hits[1].score == pytest.approx(0.529582, abs=1e-5)
    assert hits[0] == Passage("the cat sat on the mat", "d0", hits[0].score)
    # a repeated query token counts twice
    assert index.scores("sat sat")[1] == pytest.approx(2 * 0.529582, abs=1e-5)


def reference_scores(texts, query, k1, b):
    docs = [Counter(tokenize_words(t)) for t in texts]
    lengths = [sum(d.values()) for d in docs]
    avgdl = sum(lengths) / len(docs)
    out = []
    for d, length in zip(docs, lengths, strict=True):
        s = 0.0
        for term in tokenize_words(query):
            df = sum(term in other for other in docs)
            idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
            tf = d[term]
            s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avgdl)) if tf else 0.0
        out.append(s)
    return out


@pytest.mark.parametrize("k1, b", [(1.5, 0.75), (0.9, 0.4), (2.0, 1.0), (0.0, 0.0)])
def test_vectorised_scores_equal_a_plain_python_reference(tmp_path, k1, b):
    rng = random.Random(k1 * 10 + b)
    words = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choice(words[: rng.randint(5, 40)]) for _ in range(rng.randint(1, 30))) for _ in range(60)]
    bm25().build_index([Document(t, str(i)) for i, t in enumerate(texts)], tmp_path / "r.idx")
    # k1 and b apply when the index is opened: no rebuild needed to tune them
    index = bm25({"k1": k1, "b": b}).open(tmp_path / "r.idx")
    query = "w1 w3 w3 w17 w39 unknown"
    np.testing.assert_allclose(index.scores(query), reference_scores(texts, query, k1, b), rtol=1e-5, atol=1e-6)
    expected = sorted(range(len(texts)), key=lambda i: (-reference_scores(texts, query, k1, b)[i], i))
    got = [int(h.source) for h in index.search(query, 5)]
    assert got == expected[:5]


def test_ranking_sanity(tmp_path):
    docs = [
        Document("The king and the queen ruled the kingdom wisely for many years.", "royal"),
        Document("A recipe: flour, sugar, butter and eggs make a simple cake.", "cake"),
        Document("The stock market fell as investors sold shares.", "market"),
        Document("Cats purr. " + "Filler words about nothing in particular. " * 20, "long-cat"),
        Document("Cats purr.", "short-cat"),
    ]
    retriever = bm25()
    retriever.build_index(docs, tmp_path / "s.idx")
    index = retriever.open(tmp_path / "s.idx")
    assert index.search("who ruled the kingdom", 1)[0].source == "royal"
    assert index.search("butter and sugar", 1)[0].source == "cake"
    assert index.search("shares investors", 3)[0].source == "market"
    # same term frequency, shorter passage ranks higher (length normalisation)
    assert [h.source for h in index.search("cats purr", 2)] == ["short-cat", "long-cat"]
    # nothing in common: no passages; k larger than the matches: only the matches
    assert index.search("zebra", 5) == [] and index.search("", 5) == []
    assert len(index.search("the", 10)) == 2 and index.search("cake", 0) == []


def test_top_k_is_deterministic_on_ties():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 0.5])
    assert top_k(scores, 2).tolist() == [1, 2]
    assert top_k(scores, 4).tolist() == [1, 2, 4, 3]
    assert top_k(scores, 10).tolist() == [1, 2, 4, 3, 0, 5]
    assert top_k(scores, 2, np.array([0, 3, 4])).tolist() == [4, 3]


def test_tokenizers():
    assert tokenize_words("Hello, WORLD! it's 2024_x") == ["hello", "world", "it", "s", "2024_x"]
    assert tokenize_char3("Cat a") == [" ca", "cat", "at ", " a "]


def test_char3_tolerates_misspelling(tmp_path):
    docs = [Document("Citizens of Rome, hear me", "rome"), Document("The fleet sailed at dawn", "fleet")]
    words, char3 = bm25(), bm25({"tokenizer": "char3"})
    words.build_index(docs, tmp_path / "w.idx")
    char3.build_index(docs, tmp_path / "c.idx")
    assert words.open(tmp_path / "w.idx").search("citizns", 1) == []
    assert char3.open(tmp_path / "c.idx").search("citizns", 1)[0].source == "rome"
    # tokenizer null opens an index with its own tokenizer
    assert bm25().open(tmp_path / "c.idx").search("citizns", 1)[0].source == "rome"


def test_round_trip_keeps_texts_sources_and_unicode(tmp_path):
    docs = [Document(f"passage {i} — naïve café ☕ {'x' * i}", f"file.txt:{i + 1}") for i in range(50)]
    docs.append(Document("", "empty:1"))
    retriever = bm25()
    header = retriever.build_index(docs, tmp_path / "u.idx")
    index = retriever.open(tmp_path / "u.idx")
    assert len(index) == 51 and header["passages"] == 51
    assert [index.texts[i] for i in range(51)] == [d.text for d in docs]
    assert [index.sources[i] for i in range(51)] == [d.source for d in docs]
    assert index.search("café 7", 1)[0].source == "file.txt:8"
    with zipfile.ZipFile(tmp_path / "u.idx") as zf:
        assert zf.namelist()[0] == "header.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.idx"], "no temp file left behind"


def test_augment_templates():
    passages = [Passage("alpha", "a:1", 2.0), Passage("beta", "b:3", 1.0)]
    assert bm25().augment("Q?", passages) == "alpha\nbeta\n\nQ?"
    assert bm25().augment("Q?", []) == "Q?"
    custom = bm25({"template": "Context:\n{passages}Question: {prompt}",
                   "passage_template": "[{rank}] {text} ({source}, {score:.1f})\n"})
    assert custom.augment("Q?", passages) == "Context:\n[1] alpha (a:1, 2.0)\n[2] beta (b:3, 1.0)\nQuestion: Q?"


@pytest.mark.parametrize("options, message", [
    ({"template": "{passages}"}, "providers.retriever.bm25.template: must contain {prompt}"),
    ({"template": "{prompt} {ctx}"}, "providers.retriever.bm25.template: unknown placeholder {ctx}"),
    ({"passage_template": "{text"}, "providers.retriever.bm25.passage_template: not a valid template"),
    ({"tokenizer": "bpe"}, "providers.retriever.bm25.tokenizer: expected one of words, char3"),
    ({"b": 1.5}, "providers.retriever.bm25.b: expected a value <= 1"),
    ({"k1": -1}, "providers.retriever.bm25.k1: expected a value >= 0"),
])
def test_config_validation(options, message):
    with pytest.raises(ConfigError) as err:
        bm25(options)
    assert message in str(err.value)


def test_no_documents_and_self_test(tmp_path):
    with pytest.raises(AptError, match="no documents to index"):
        bm25().build_index([], tmp_path / "e.idx")
    assert not (tmp_path / "e.idx").exists()
    provider = default_registry().make("retriever", "bm25", {})
    assert provider.self_test() == "bm25: index, search and round-trip ok"


def test_fit_drops_low_ranked_then_cuts_the_best():
    from apt.tokenizers import CharTokenizer

    retriever = Bm25Provider(Bm25Config(template="{passages}{prompt}", passage_template="{text}\n")).build()
    tok = CharTokenizer("abcdefgh\n?")
    ranked = [Passage("abcd", "a:1", 3.0), Passage("efgh", "a:2", 2.0), Passage("hhhhhhhh", "a:3", 1.0)]
    assert retriever.fit("?", ranked, tok, 100) == ranked
    assert retriever.fit("?", ranked, tok, 11) == ranked[:2]
    assert retriever.fit("?", [Passage("abcdefgh", "a:1", 1.0)], tok, 5) == [Passage("abc", "a:1", 1.0)]
    assert retriever.fit("?", ranked, tok, 1) == []


def test_fit_drops_characters_the_model_never_saw():
    from apt.tokenizers import CharTokenizer

    retriever = Bm25Provider(Bm25Config(template="{passages}{prompt}", passage_template="{text}\n")).build()
    assert retriever.fit("?", [Passage("aXbYc", "d:1", 1.0)], CharTokenizer("abc\n?"), 100) == [
        Passage("abc", "d:1", 1.0)]
