"""The encoder module: shapes promised by tokens(), finite gradients, and the config's cross-checks."""

from __future__ import annotations

import pytest
import torch

from apt import ConfigError, MediaEncoder, ModelDims
from apt_plugin_audio.encoder import LogMelConvEncoder, sinusoids
from apt_plugin_audio.provider import LogMelConvConfig, LogMelConvProvider

DIMS = ModelDims(n_layer=2, n_head=2, d_model=32, block_size=64, vocab_size=11)


def provider(**options: object) -> LogMelConvProvider:
    return LogMelConvProvider(LogMelConvConfig(**options))  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "tokens"), [
    ({}, 37),  # 1.5 s: 150 frames -> 75 positions -> pool 2 -> 37
    ({"pool": 1}, 75),
    ({"pool": 3, "seconds": 1.0}, 16),  # 100 frames -> 50 -> 16
    ({"seconds": 1.005, "hop_length": 160, "pool": 1}, 50),  # 16080 samples -> 100 frames (Whisper drops the last)
    ({"seconds": 30.0, "n_mels": 80, "pool": 1}, 1500),  # Whisper's own geometry
])
def test_tokens_match_the_module(options: dict[str, object], tokens: int) -> None:
    p = provider(**options)
    assert p.tokens() == tokens
    module = p.build(DIMS)
    assert isinstance(module, MediaEncoder) and module.n_tokens == tokens and module.d_out == 32
    if p.frames <= 400:
        x = torch.randn(3, p.config.n_mels, p.frames)  # (M, n_mels, frames)
        assert module(x).shape == (3, tokens, 32)


def test_width_overrides_d_model_and_gradients_are_finite(tmp_path, write_pcm, sine) -> None:
    p = provider(width=48, heads=4, layers=1)
    torch.manual_seed(0)
    module = p.build(DIMS)
    assert module.d_out == 48
    x = torch.stack([p.load(write_pcm(tmp_path / f"{f}.wav", sine(f, 16000, 1.0), 16000)) for f in (300.0, 900.0)])
    out = module(x)  # (2, 37, 48)
    assert out.shape == (2, p.tokens(), 48)
    out.pow(2).mean().backward()
    grads = [q.grad for q in module.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert module.positions.grad is not None and module.positions.grad.abs().sum() > 0  # positions are learned


def test_positions_start_as_whispers_sinusoids() -> None:
    module = provider(pool=1).build(DIMS)
    assert torch.equal(module.positions.detach(), sinusoids(75, 32))
    table = sinusoids(4, 8)
    assert torch.allclose(table[1, :4], torch.sin(torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3), 1e-4])))


def test_pooling_averages_the_unpooled_output() -> None:
    torch.manual_seed(0)
    whole = provider(pool=1).build(DIMS).eval()
    pooled = LogMelConvEncoder(40, 150, 32, 2, 2, 128, pool=2).eval()
    pooled.load_state_dict(whole.state_dict())
    x = torch.randn(2, 40, 150)
    with torch.no_grad():
        a, b = whole(x), pooled(x)  # (2, 75, 32), (2, 37, 32)
    assert torch.allclose(b, a[:, :74].reshape(2, 37, 2, 32).mean(dim=2), atol=1e-6)


@pytest.mark.parametrize(("options", "key", "fragment"), [
    ({"seconds": 0.01}, "seconds", "shorter than half the STFT window"),
    ({"seconds": 0.1, "pool": 8}, "pool", "fewer than pool 8"),
])
def test_bad_configs_name_their_key(options: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        provider(**options)
    assert info.value.key == key and fragment in info.value.message


def test_check_refuses_widths_the_heads_do_not_divide() -> None:
    with pytest.raises(ConfigError) as info:
        provider(heads=3).check(DIMS)
    assert info.value.key == "heads" and "not divisible by heads 3" in info.value.message
    with pytest.raises(ConfigError) as info:
        provider(width=30, heads=4).check(DIMS)
    assert info.value.key == "width" and "not divisible" in info.value.message
    with pytest.raises(ConfigError) as info:
        provider(width=15, heads=3).check(DIMS)
    assert info.value.key == "width" and "must be even" in info.value.message


def test_self_test_is_one_line() -> None:
    line = provider().self_test()
    assert "\n" not in line and "37 tokens" in line
