"""Whisper weights saved by transformers load into the encoder and give transformers' own output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from apt import ConfigError, ModelDims
from apt_plugin_audio.provider import LogMelConvConfig, LogMelConvProvider

transformers = pytest.importorskip("transformers")

DIMS = ModelDims(n_layer=2, n_head=2, d_model=64, block_size=64, vocab_size=11)
#: Matches the tiny Whisper below: 1.5 s at 16 kHz / hop 160 = 150 frames = 2 x max_source_positions.
MATCHING = {"n_mels": 40, "seconds": 1.5, "width": 32, "layers": 2, "heads": 2, "mlp_mult": 2, "pool": 1}


def tiny_whisper(folder: Path, **overrides: int) -> transformers.WhisperForConditionalGeneration:
    config = transformers.WhisperConfig(**{
        "d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
        "decoder_layers": 1, "decoder_attention_heads": 2, "decoder_ffn_dim": 64, "num_mel_bins": 40,
        "max_source_positions": 75, "max_target_positions": 32, "vocab_size": 100,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1, "decoder_start_token_id": 2,
        "suppress_tokens": None, "begin_suppress_tokens": None, **overrides})
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # random biases and norms, so a mapping that drops one cannot pass by luck
        for name, p in model.model.encoder.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, transformers.WhisperForConditionalGeneration]:
    folder = tmp_path_factory.mktemp("whisper")
    return folder, tiny_whisper(folder)


def loaded(folder: Path, **options: object) -> torch.nn.Module:
    provider = LogMelConvProvider(LogMelConvConfig(**{**MATCHING, "pretrained": str(folder), **options}))
    module = provider.build(DIMS)
    provider.load_pretrained(module)
    return module.eval()


def test_output_equals_transformers(whisper, tmp_path, write_pcm, sine) -> None:
    folder, model = whisper
    provider = LogMelConvProvider(LogMelConvConfig(**MATCHING))
    clips = [write_pcm(tmp_path / f"{f}.wav", sine(f, 22050, 1.2), 22050) for f in (220.0, 1500.0)]
    features = torch.stack([provider.load(c) for c in clips])  # (2, 40, 150)
    features = torch.cat([features, torch.randn(1, 40, 150)])
    with torch.no_grad():
        ours = loaded(folder)(features)  # (3, 75, 32)
        theirs = model.model.encoder(features).last_hidden_state
    assert ours.shape == theirs.shape == (3, 75, 32)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_bare_encoder_checkpoint_loads(whisper, tmp_path) -> None:
    folder, model = whisper
    encoder_only = tmp_path / "encoder"
    model.model.encoder.save_pretrained(encoder_only)  # keys without the "model.encoder." prefix
    features = torch.randn(2, 40, 150)
    with torch.no_grad():
        torch.testing.assert_close(loaded(encoder_only)(features), model.model.encoder(features).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)


def test_shorter_clips_use_the_first_positions(whisper) -> None:
    folder, model = whisper
    module = loaded(folder, seconds=1.0, pool=2)
    assert module.n_tokens == 25
    torch.testing.assert_close(module.positions.detach(), model.model.encoder.embed_positions.weight[:50])


@pytest.mark.parametrize(("option", "value", "fragment"), [
    ("n_mels", 80, "takes 40 mel bins, got 80: set providers.encoder.logmel_conv.n_mels: 40"),
    ("width", 48, "has width (d_model) 32, got 48: set providers.encoder.logmel_conv.width: 32"),
    ("layers", 3, "set providers.encoder.logmel_conv.layers: 2"),
    ("heads", 4, "set providers.encoder.logmel_conv.heads: 2"),
    ("mlp_mult", 4, "set providers.encoder.logmel_conv.mlp_mult: 2"),
    ("seconds", 2.0, "set providers.encoder.logmel_conv.seconds to at most 1.5"),
])
def test_mismatched_options_name_the_key_and_value(whisper, option: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        loaded(whisper[0], **{option: value})
    assert info.value.key == option and "\n" not in str(info.value)
    assert fragment in info.value.message and str(whisper[0]) in info.value.message


def test_feature_settings_must_match_the_preprocessor(whisper, tmp_path) -> None:
    folder = tmp_path / "hub"
    shutil.copytree(whisper[0], folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"feature_size": 40, "sampling_rate": 16000, "n_fft": 400, "hop_length": 160}))
    loaded(folder)
    with pytest.raises(ConfigError, match="set providers.encoder.logmel_conv.hop_length: 160") as info:
        loaded(folder, hop_length=200)
    assert info.value.key == "hop_length"


def test_missing_folder_and_files(tmp_path, whisper) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        loaded(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="holds no config.json"):
        loaded(tmp_path)
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "config.json").write_text((whisper[0] / "config.json").read_text())
    with pytest.raises(ConfigError, match="holds no model.safetensors") as info:
        loaded(only_config)
    assert info.value.key == "pretrained"


def test_a_model_that_is_not_whisper(tmp_path) -> None:
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    with pytest.raises(ConfigError, match="is not a Whisper config") as info:
        loaded(folder)
    assert info.value.key == "pretrained"


def test_no_pretrained_leaves_the_module_alone() -> None:
    provider = LogMelConvProvider(LogMelConvConfig(**MATCHING))
    module = provider.build(DIMS)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    provider.load_pretrained(module)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
