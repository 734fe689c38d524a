"""A Hugging Face Whisper encoder, from a local folder, into :class:`LogMelConvEncoder`.

Reads ``config.json`` and ``model.safetensors`` (or a sharded ``model.safetensors.index.json``)
itself: no network, no ``transformers`` at run time, and only the encoder's tensors are read from
a checkpoint that also holds the decoder. Every mismatch is one :class:`apt.ConfigError` naming
the option to set, because the fix is always in the profile.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from apt import ConfigError
from apt_plugin_audio.encoder import LogMelConvEncoder

if TYPE_CHECKING:
    from apt_plugin_audio.provider import LogMelConvConfig

SECTION = "providers.encoder.logmel_conv"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
#: Where the encoder sits in the checkpoints transformers writes: WhisperForConditionalGeneration
#: and WhisperModel, a bare WhisperEncoder saved with a prefix, or the encoder saved alone.
PREFIXES = ("model.encoder.", "encoder.", "")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError("pretrained", f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("pretrained", f"{path} is not a JSON object")
    return data


def _weight_files(folder: Path) -> list[Path]:
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        index = _read_json(folder / INDEX).get("weight_map", {})
        files = sorted({folder / str(name) for name in index.values()})
        if files and all(f.is_file() for f in files):
            return files
        raise ConfigError("pretrained", f"{folder / INDEX} names shard files that are missing")
    raise ConfigError("pretrained", f"{folder} holds no {WEIGHTS}: point it at a folder written by "
                                    f"save_pretrained (safetensors)")


def _expect(key: str, ours: int, theirs: int, what: str, folder: Path) -> None:
    if ours != theirs:
        raise ConfigError(key, f"the Whisper encoder in {folder} has {what} {theirs}, got {ours}: "
                               f"set {SECTION}.{key}: {theirs}")


def check_fit(folder: Path, hf: dict[str, Any], module: LogMelConvEncoder, config: LogMelConvConfig) -> None:
    """Refuse a Whisper encoder whose shape or feature extraction differs from the profile's."""
    try:
        mels, d_model = int(hf["num_mel_bins"]), int(hf["d_model"])
        layers, heads = int(hf["encoder_layers"]), int(hf["encoder_attention_heads"])
        ffn, max_positions = int(hf["encoder_ffn_dim"]), int(hf["max_source_positions"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError("pretrained", f"{folder / 'config.json'} is not a Whisper config "
                                        f"(missing or bad {err})") from None
    if mels != module.n_mels:
        raise ConfigError("n_mels", f"the Whisper encoder in {folder} takes {mels} mel bins, got {module.n_mels}: "
                                    f"set {SECTION}.n_mels: {mels}")
    _expect("width", module.d_out, d_model, "width (d_model)", folder)
    _expect("layers", len(module.blocks), layers, "encoder layers", folder)
    _expect("heads", config.heads, heads, "attention heads", folder)
    if ffn != module.d_out * config.mlp_mult:
        if ffn % d_model:
            raise ConfigError("mlp_mult", f"the Whisper encoder in {folder} has an MLP of {ffn}, which is not a "
                                          f"multiple of its width {d_model}")
        _expect("mlp_mult", config.mlp_mult, ffn // d_model, "MLP multiple (encoder_ffn_dim / d_model)", folder)
    activation = hf.get("activation_function", "gelu")
    if activation != "gelu":
        raise ConfigError("pretrained", f"the Whisper encoder in {folder} uses activation {activation!r}; "
                                        f"encoder.logmel_conv implements Whisper's 'gelu' only")
    positions = module.positions.shape[0]
    if positions > max_positions:
        longest = max_positions * 2 * config.hop_length / config.sample_rate
        raise ConfigError("seconds", f"the Whisper encoder in {folder} has {max_positions} positions "
                                     f"({longest:g} s of audio), but {config.seconds:g} s needs {positions}: "
                                     f"set {SECTION}.seconds to at most {longest:g}")
    # The feature extractor's settings travel beside the model when the folder came from the Hub.
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        fe = _read_json(pre)
        for ours, theirs in (("sample_rate", "sampling_rate"), ("n_fft", "n_fft"), ("hop_length", "hop_length")):
            if theirs in fe and int(fe[theirs]) != getattr(config, ours):
                _expect(ours, getattr(config, ours), int(fe[theirs]), f"{theirs}", folder)


def _read_encoder(files: list[Path], folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The encoder's tensors (names without prefix) and the prefix they had."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise ConfigError("pretrained", "loading Whisper weights needs safetensors: "
                                        "pip install 'apt-plugin-audio[whisper]'") from None

    tensors: dict[str, torch.Tensor] = {}
    prefix: str | None = None
    try:
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                if prefix is None:
                    prefix = next((p for p in PREFIXES if f"{p}conv1.weight" in keys), None)
                if prefix is None:
                    continue
                for key in keys:
                    if key.startswith(prefix):
                        tensors[key[len(prefix):]] = f.get_tensor(key)
    except (SafetensorError, OSError) as err:
        raise ConfigError("pretrained", f"cannot read {folder}: {err}") from None
    if prefix is None:
        raise ConfigError("pretrained", f"{folder} holds no Whisper encoder (no conv1.weight under "
                                        f"{', '.join(repr(p) for p in PREFIXES if p)} or at the top level)")
    return tensors, prefix


def encoder_state(tensors: dict[str, torch.Tensor], module: LogMelConvEncoder, folder: Path,
                  prefix: str) -> dict[str, torch.Tensor]:
    """Whisper's names mapped onto the module's; q, k and v are fused into ``qkv`` (k has no bias)."""

    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise ConfigError("pretrained", f"{folder} lacks {prefix}{name}: not a complete Whisper encoder")
        return tensors[name]

    state = {
        "conv1.weight": take("conv1.weight"), "conv1.bias": take("conv1.bias"),
        "conv2.weight": take("conv2.weight"), "conv2.bias": take("conv2.bias"),
        "positions": take("embed_positions.weight")[: module.positions.shape[0]],
        "ln_post.weight": take("layer_norm.weight"), "ln_post.bias": take("layer_norm.bias"),
    }
    for i in range(len(module.blocks)):
        src, dst = f"layers.{i}.", f"blocks.{i}."
        attn = f"{src}self_attn."
        q_bias = take(f"{attn}q_proj.bias")
        state |= {
            f"{dst}ln_1.weight": take(f"{src}self_attn_layer_norm.weight"),
            f"{dst}ln_1.bias": take(f"{src}self_attn_layer_norm.bias"),
            f"{dst}qkv.weight": torch.cat([take(f"{attn}q_proj.weight"), take(f"{attn}k_proj.weight"),
                                           take(f"{attn}v_proj.weight")]),  # (3W, W)
            f"{dst}qkv.bias": torch.cat([q_bias, torch.zeros_like(q_bias), take(f"{attn}v_proj.bias")]),  # (3W,)
            f"{dst}proj.weight": take(f"{attn}out_proj.weight"), f"{dst}proj.bias": take(f"{attn}out_proj.bias"),
            f"{dst}ln_2.weight": take(f"{src}final_layer_norm.weight"),
            f"{dst}ln_2.bias": take(f"{src}final_layer_norm.bias"),
            f"{dst}fc.weight": take(f"{src}fc1.weight"), f"{dst}fc.bias": take(f"{src}fc1.bias"),
            f"{dst}fc_out.weight": take(f"{src}fc2.weight"), f"{dst}fc_out.bias": take(f"{src}fc2.bias"),
        }
    return state


def load_whisper(folder: Path, module: LogMelConvEncoder, config: LogMelConvConfig) -> None:
    """Fill ``module`` with the Whisper encoder in ``folder``, or raise one ConfigError line."""
    if not folder.is_dir():
        raise ConfigError("pretrained", f"{folder} is not a folder: point it at a Whisper model saved with "
                                        f"save_pretrained (config.json + {WEIGHTS})")
    if not (folder / "config.json").is_file():
        raise ConfigError("pretrained", f"{folder} holds no config.json: point it at a Whisper model saved "
                                        f"with save_pretrained")
    hf = _read_json(folder / "config.json")
    check_fit(folder, hf, module, config)
    tensors, prefix = _read_encoder(_weight_files(folder), folder)
    state = encoder_state(tensors, module, folder, prefix)
    own = module.state_dict()
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ConfigError("pretrained", f"{folder}: {key} has shape {tuple(value.shape)}, the encoder "
                                            f"expects {tuple(own[key].shape)}")
    with torch.no_grad():
        module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
