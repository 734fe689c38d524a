"""Tokenizers as providers: the built-ins pass the conformance suite, checkpoints find theirs by name."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from apt.errors import AptError, CheckpointError
from apt.registry import GROUP, Registry
from apt.testing import ProviderContract
from apt.tokenizers import (
    ByteProvider,
    ByteTokenizer,
    CharProvider,
    CharTokenizer,
    build_tokenizer,
    tokenizer_from_state,
)
from core_cli import SMALL, assert_one_line_error, run


class TestCharContract(ProviderContract):
    provider = CharProvider


class TestByteContract(ProviderContract):
    provider = ByteProvider


def builtins_only() -> Registry:
    return Registry([EntryPoint("tokenizer.char", "apt.tokenizers:CharProvider", GROUP),
                     EntryPoint("tokenizer.byte", "apt.tokenizers:ByteProvider", GROUP)])


def test_states_of_existing_checkpoints_still_load():
    char = tokenizer_from_state({"kind": "char", "chars": "\n !abc"})
    assert isinstance(char, CharTokenizer) and char.encode("a b!") == [3, 1, 4, 2]
    assert isinstance(tokenizer_from_state({"kind": "byte"}), ByteTokenizer)


def test_a_missing_provider_names_the_package_to_install(monkeypatch):
    monkeypatch.setattr("apt.tokenizers.default_registry", builtins_only)
    with pytest.raises(CheckpointError) as err:
        tokenizer_from_state({"kind": "bpe", "tokenizer_json": "{}"})
    message = str(err.value)
    assert "\n" not in message and "pip install apt-plugin-bpe" in message and "'bpe'" in message


def test_a_tokenizer_other_than_the_one_asked_for_is_refused():
    with pytest.raises(CheckpointError, match="trained with tokenizer 'char' but data.tokenizer asks for 'byte'"):
        tokenizer_from_state({"kind": "char", "chars": "ab"}, expected="byte")


def test_damaged_state_and_unknown_names_are_one_line_errors():
    with pytest.raises(CheckpointError, match="names no provider"):
        tokenizer_from_state({"chars": "ab"})
    with pytest.raises(CheckpointError, match="char tokenizer state is damaged"):
        tokenizer_from_state({"kind": "char"})
    with pytest.raises(AptError, match=r"^data.tokenizer: no tokenizer provider named 'wordpiece' is installed"):
        build_tokenizer("wordpiece", iter(["text"]), registry=builtins_only())


def test_byte_tokenizer_never_reads_the_corpus():
    def corpus():
        raise AssertionError("read")
        yield ""

    assert build_tokenizer("byte", corpus(), registry=builtins_only()).vocab_size == 256


def test_resuming_with_another_tokenizer_is_one_clear_line(tmp_path, env):
    args = ["train", "-p", "tiny_debug", *SMALL, "--set", "model.attention=sdpa", "--set", "train.max_iters=2",
            "--set", "train.eval_interval=2", "--set", f"checkpoint.dir={tmp_path / 'run'}"]
    first = run(args, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run([*args, "--resume", "auto", "--set", "train.max_iters=4", "--set", "data.tokenizer=byte"], env=env, cwd=tmp_path)
    assert_one_line_error(again, "data.tokenizer='char' but the profile now says 'byte'", code=again.returncode)
    assert again.returncode != 0
