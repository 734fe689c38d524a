"""Multimodal data and fusion in the core: batch layout, bad records, fusion behaviour."""

from __future__ import annotations

import json

import pytest
import torch

from apt import config as cfg
from apt.errors import AptError
from apt.media import IGNORE, PLACEHOLDER, MediaSpec, collate, read_records
from apt.model import ModelBuilder
from apt.profile import Profile
from apt.tokenizers import CharTokenizer
from media_fixtures import registry

MODEL = {"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 24, "attention": "sdpa", "ffn": "dense"}
TOKENIZER = CharTokenizer("\nabcdefghijklmnopqrstuvwxyz ")


def profile(**model) -> Profile:
    return cfg.build(Profile, {"model": {**MODEL, **model}})


def build(seed: int = 0, **model):
    torch.manual_seed(seed)
    return ModelBuilder(profile(**model), TOKENIZER.vocab_size, registry=registry(), strict=True).build()


def corpus(tmp_path, lines: list[object]) -> object:
    (tmp_path / "pics").mkdir(exist_ok=True)
    for i in range(3):
        (tmp_path / "pics" / f"{i}.txt").write_text(f"{i} 1 0 {i}")
    path = tmp_path / "data.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def spec(**model) -> MediaSpec:
    found = MediaSpec.from_profile(profile(encoders={"image": "tiny"}, **model), registry())
    assert found is not None
    return found


def test_batch_layout_puts_slots_first_and_loss_on_text_only(tmp_path):
    path = corpus(tmp_path, [{"text": "ab", "image": "pics/0.txt"}, {"text": "cde"}])
    records = read_records(path, spec(), TOKENIZER, 24).items
    batch = collate(records, spec())
    # row 0: 3 slots, "\n", "a", "b", "\n"; row 1: "\n", "c", "d", "e", "\n"; inputs drop the last token
    assert batch.tokens.shape == (2, 6)
    assert batch.tokens[0, :4].tolist() == [PLACEHOLDER] * 3 + TOKENIZER.encode("\n")
    assert batch.targets[0].tolist() == [IGNORE] * 3 + TOKENIZER.encode("ab\n")
    assert batch.targets[1].tolist() == TOKENIZER.encode("cde\n") + [IGNORE] * 2
    assert batch.media is not None
    assert batch.media.rows["image"].tolist() == [0] and batch.media.starts["image"].tolist() == [0]
    assert batch.media.inputs["image"].tolist() == [[0.0, 1.0, 0.0, 0.0]]


@pytest.mark.parametrize(("line", "reason"), [
    ({"text": "a", "image": "pics/missing.txt"}, "image file 'pics/missing.txt' not found"),
    ({"text": "a", "image": "../outside.txt"}, "leaves the JSONL file's folder"),
    ({"text": "a", "image": "/etc/passwd"}, "is absolute"),
    ({"text": "a", "image": 7}, "expected a relative file path"),
    ({"text": "a", "image": "pics/bad.txt"}, "cannot read image: expected 4 numbers, got 1"),
    ({"text": "a", "audio": "pics/0.txt"}, "model.encoders has no audio encoder"),
    ({"image": "pics/0.txt"}, "expected a JSON object with a string 'text'"),
    ("{not json", "not JSON"),
])
def test_a_bad_record_names_its_line_and_why(tmp_path, line, reason):
    (tmp_path / "outside.txt").write_text("1 2 3 4")
    path = corpus(tmp_path, [{"text": "ab", "image": "pics/1.txt"}, line])
    (tmp_path / "pics" / "bad.txt").write_text("1")
    with pytest.raises(AptError) as err:
        read_records(path, spec(), TOKENIZER, 24)
    assert str(err.value).startswith(f"{path}:2: ") and reason in str(err.value)
    assert "data.skip_bad" in str(err.value)
    kept = read_records(path, spec(), TOKENIZER, 24, skip_bad=True)
    assert len(kept) == 1 and kept.skipped == 1 and reason in kept.reasons[0]


def test_a_symlink_out_of_the_corpus_folder_is_refused(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("1 2 3 4")
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "link.txt").symlink_to(outside)
    path = data / "data.jsonl"
    path.write_text(json.dumps({"text": "a", "image": "link.txt"}) + "\n")
    with pytest.raises(AptError, match="leaves the JSONL file's folder"):
        read_records(path, spec(), TOKENIZER, 24)


def test_xattn_starts_as_exactly_the_text_only_model(tmp_path):
    text = build(0).model.eval()
    fused = build(0, encoders={"image": "tiny"}, fusion="xattn").model.eval()
    lm = {k: v for k, v in fused.state_dict().items() if not k.startswith(("extras.encoders", "extras.fusion"))}
    assert lm.keys() == text.state_dict().keys()
    assert all(torch.equal(v, text.state_dict()[k]) for k, v in lm.items())
    path = corpus(tmp_path, [{"text": "abc", "image": "pics/1.txt"}, {"text": "ab", "image": "pics/2.txt"}])
    batch = collate(read_records(path, spec(fusion="xattn"), TOKENIZER, 24).items, spec(fusion="xattn"))
    with torch.no_grad():
        assert torch.equal(fused(batch.tokens, batch.media).logits, text(batch.tokens).logits)
        gates = [p for n, p in fused.named_parameters() if "gate" in n]
        assert gates and all(float(g) == 0.0 for g in gates)
        gates[0].fill_(0.5)  # once a gate opens, the image changes the text's logits
        assert not torch.equal(fused(batch.tokens, batch.media).logits, text(batch.tokens).logits)


@pytest.mark.parametrize("fusion", ["prefix", "xattn"])
def test_rows_are_independent_and_media_matter(tmp_path, fusion):
    built = build(1, encoders={"image": "tiny"}, fusion=fusion)
    model = built.model.eval()
    for p in model.parameters():  # open xattn's gates so the media reach the text
        if p.numel() == 1:
            p.data.fill_(1.0)
    s = spec(fusion=fusion)
    path = corpus(tmp_path, [{"text": "abc", "image": "pics/1.txt"}, {"text": "abc", "image": "pics/2.txt"},
                             {"text": "abc"}])
    records = read_records(path, s, TOKENIZER, 24).items
    with torch.no_grad():
        mixed = collate(records, s)
        logits = model(mixed.tokens, mixed.media).logits
        for row, record in enumerate(records):
            alone = collate([record], s)
            one = model(alone.tokens, alone.media).logits[0]
            T = one.shape[0]
            assert torch.allclose(logits[row, :T], one, atol=1e-5), f"row {row} depends on its batch"
        text_rows = slice(s.slots["image"] if fusion == "prefix" else 0, None)
        assert not torch.allclose(logits[0, text_rows], logits[1, text_rows]), "the image made no difference"
    assert built.providers["encoder.image"]["name"] == "tiny" and built.providers["fusion"]["name"] == fusion


def test_unknown_medium_and_fusion_without_encoders_are_profile_errors():
    from apt.errors import ConfigError

    with pytest.raises(ConfigError, match="model.encoders.video: unknown medium; expected one of image, audio"):
        profile(encoders={"video": "tiny"})
    with pytest.raises(ConfigError, match="model.fusion: needs model.encoders"):
        profile(fusion="prefix")
    with pytest.raises(ConfigError, match="model.encoders.image: no encoder provider named 'vit2'"):
        MediaSpec.from_profile(profile(encoders={"image": "vit2"}), registry())
