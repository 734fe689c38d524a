"""tokenizer.bpe the way a user meets it: trained, saved, loaded, carried by checkpoints, through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from apt.errors import AptError
from apt.testing import ProviderContract, contract
from apt.tokenizers import tokenizer_from_state
from apt_plugin_bpe.bpe import BPETokenizer, train
from apt_plugin_bpe.provider import BPEProvider
from core_cli import SMALL, assert_one_line_error, run

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
          "Grüße aus Köln — naïve café; 東京の夜 🙂 e\u0301\n") * 60
UNICODE = "Ünïcødé “quotes” 東京 🙂👍🏽 e\u0301 — never seen: ⟨ψ|φ⟩ ǅ\ttabs\r\n"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny tokenizer.json trained here and saved in a folder, as `apt tokenizer train` writes it."""
    folder = tmp_path_factory.mktemp("tok")
    train([CORPUS], vocab_size=300, min_frequency=2).save(folder)
    return folder


def test_training_learns_merges_and_round_trips_unicode():
    tok = train(iter([CORPUS[:4000], CORPUS[4000:]]), vocab_size=320)
    assert 256 < tok.vocab_size <= 320
    ids = tok.encode("First Citizen: speak, speak.")
    assert len(ids) < len("First Citizen: speak, speak.")
    for text in (UNICODE, CORPUS[:500], "", " leading and trailing spaces  "):
        assert tok.decode(tok.encode(text)) == text
        assert all(0 <= i < tok.vocab_size for i in tok.encode(text))


def test_save_load_gives_the_same_tokenizer(saved):
    loaded = BPETokenizer.load(saved)
    again = BPETokenizer.load(saved / "tokenizer.json")
    assert loaded.state() == again.state()
    assert loaded.encode(UNICODE) == again.encode(UNICODE) and loaded.decode(loaded.encode(UNICODE)) == UNICODE
    restored = tokenizer_from_state(json.loads(json.dumps(loaded.state())))
    assert restored.state() == loaded.state() and restored.encode(CORPUS[:300]) == loaded.encode(CORPUS[:300])


def test_path_option_loads_instead_of_training(saved):
    provider = BPEProvider(BPEProvider.Config(path=str(saved), vocab_size=4096))

    def corpus():
        raise AssertionError("a loaded tokenizer must not read the corpus")
        yield ""

    tok = provider.build(corpus())
    assert tok.state() == BPETokenizer.load(saved).state() and tok.vocab_size <= 300


def test_missing_or_bad_tokenizer_json_is_one_line(tmp_path):
    with pytest.raises(AptError, match="no tokenizer.json at") as err:
        BPEProvider(BPEProvider.Config(path=str(tmp_path))).build(iter(()))
    assert "\n" not in str(err.value)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(AptError, match="not a Hugging Face tokenizer.json") as err:
        BPETokenizer.load(tmp_path)
    assert "\n" not in str(err.value)


class TestBPEFromDiskContract(ProviderContract):
    provider = BPEProvider

    @pytest.fixture
    def provider_options(self, saved):
        return {"path": str(saved)}


def test_contract_tokenizer_check_with_a_small_vocabulary():
    contract.check_tokenizer(BPEProvider, {"vocab_size": 257, "min_frequency": 1})


def train_args(root, *extra):
    return ["train", "-p", "tiny_debug", *SMALL, "--set", "model.attention=sdpa", "--set", "train.max_iters=6",
            "--set", "train.eval_interval=6", "--set", f"data.train_path={root / 'corpus.txt'}",
            "--set", "data.tokenizer=bpe", "--set", f"checkpoint.dir={root / 'run'}", *extra]


def test_train_trains_the_tokenizer_and_the_checkpoint_carries_it(tmp_path, apt_env):
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    trained = run(train_args(tmp_path, "--set", "providers.tokenizer.bpe.vocab_size=300"), env=apt_env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    tok = tokenizer_from_state(state["tokenizer"])
    assert state["tokenizer"]["kind"] == "bpe" and 256 < tok.vocab_size <= 300
    assert state["model"]["lm_head.weight"].shape[0] == tok.vocab_size

    generated = run(["generate", "--checkpoint", "run", "--prompt", "Grüße 🙂", "--max-new-tokens", "12",
                     "--seed", "1"], env=apt_env, cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("Grüße 🙂")

    (tmp_path / "held_out.txt").write_text(UNICODE * 3, encoding="utf-8")
    evaluated = run(["eval", "--checkpoint", "run", "--data", "held_out.txt", "--json"], env=apt_env, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["tokens"] == len(tok.encode(UNICODE * 3)) - 1

    resumed = run(train_args(tmp_path, "--set", "providers.tokenizer.bpe.vocab_size=300", "--resume", "auto",
                             "--set", "train.max_iters=8"), env=apt_env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert tokenizer_from_state(state["tokenizer"]).state() == tok.state()

    mismatch = run(train_args(tmp_path, "--resume", "auto", "--set", "train.max_iters=10",
                              "--set", "data.tokenizer=char"), env=apt_env, cwd=tmp_path)
    assert_one_line_error(mismatch, "data.tokenizer='bpe' but the profile now says 'char'", code=mismatch.returncode)
    assert mismatch.returncode != 0


def test_tokenizer_train_command_writes_a_folder_the_profile_can_use(tmp_path, apt_env):
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    made = run(["tokenizer", "train", "--data", "corpus.txt", "--vocab-size", "280", "--out", "tok"], env=apt_env,
               cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("wrote tok/tokenizer.json (vocabulary ")
    on_disk = BPETokenizer.load(tmp_path / "tok")
    assert on_disk.vocab_size <= 280 and on_disk.decode(on_disk.encode(UNICODE)) == UNICODE

    trained = run(train_args(tmp_path, "--set", f"providers.tokenizer.bpe.path={tmp_path / 'tok'}"), env=apt_env,
                  cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert state["tokenizer"] == on_disk.state()

    bad = run(["tokenizer", "train", "--data", "missing.txt", "--out", "tok2"], env=apt_env, cwd=tmp_path)
    assert_one_line_error(bad, "--data: file 'missing.txt' not found", code=bad.returncode)
    small = run(["tokenizer", "train", "--data", "corpus.txt", "--vocab-size", "10", "--out", "tok2"], env=apt_env,
                cwd=tmp_path)
    assert_one_line_error(small, "--vocab-size must be at least 257", code=small.returncode)
