"""Published CLIP and SigLIP vision towers load into encoder.vit and compute what transformers computes.

transformers only writes the folders here (tiny random models, saved the way the Hub stores them);
encoder.vit reads them with json and safetensors, offline.
"""

from __future__ import annotations

import json

import pytest
import torch

from apt import ConfigError, ModelDims
from apt_plugin_vision.provider import ViTConfig, ViTProvider

transformers = pytest.importorskip("transformers")

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 16, "patch_size": 4, "num_channels": 3}
TEXT = {"vocab_size": 50, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "max_position_embeddings": 16}
#: The encoder.vit options matching VISION for each family.
OPTIONS = {
    "clip": {"image_size": 16, "patch_size": 4, "channels": 3, "width": 32, "layers": 2, "heads": 2, "mlp_mult": 2,
             "class_token": True, "layout": "clip", "activation": "quick_gelu"},
    "siglip": {"image_size": 16, "patch_size": 4, "channels": 3, "width": 32, "layers": 2, "heads": 2,
               "mlp_mult": 2, "class_token": False, "layout": "siglip", "activation": "gelu_tanh"},
}
DIMS = ModelDims(n_layer=2, n_head=4, d_model=64, block_size=16, vocab_size=11)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def save(kind: str, folder, *, whole: bool = False):
    """A random tiny HF model of ``kind`` saved to ``folder``; returns its vision tower (eval mode)."""
    torch.manual_seed(0)
    t = transformers
    if kind == "clip":
        model = (t.CLIPModel(t.CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=16)) if whole
                 else t.CLIPVisionModel(t.CLIPVisionConfig(**VISION)))
    else:
        model = (t.SiglipModel(t.SiglipConfig(vision_config=VISION, text_config=TEXT)) if whole
                 else t.SiglipVisionModel(t.SiglipVisionConfig(**VISION)))
    with torch.no_grad():  # random LayerNorm and bias values, so a misplaced one cannot go unnoticed
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return (model.vision_model if whole else model).eval()


def loaded(folder, **options) -> torch.nn.Module:
    provider = ViTProvider(ViTConfig(pretrained=str(folder), **options))
    provider.check(DIMS)
    torch.manual_seed(1)
    module = provider.build(DIMS)
    provider.load_pretrained(module)
    return module.eval()


@pytest.mark.parametrize("whole", [False, True], ids=["vision_model", "whole_model"])
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_output_equals_last_hidden_state(tmp_path, kind, whole):
    reference = save(kind, tmp_path, whole=whole)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    if whole:
        assert "vision_config" in json.loads((tmp_path / "config.json").read_text())
    ours = loaded(tmp_path, **OPTIONS[kind])
    pixels = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = reference(pixel_values=pixels).last_hidden_state
        got = ours(pixels)
    assert got.shape == want.shape == (3, ours.n_tokens, 32)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_pretrained_is_optional_and_changes_the_weights(tmp_path):
    save("siglip", tmp_path)
    provider = ViTProvider(ViTConfig(**OPTIONS["siglip"]))
    torch.manual_seed(1)
    module = provider.build(DIMS)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    provider.load_pretrained(module)  # no pretrained option: nothing happens
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    after = loaded(tmp_path, **OPTIONS["siglip"]).state_dict()
    assert not torch.equal(before["blocks.0.qkv.weight"], after["blocks.0.qkv.weight"])


def error(folder, **options) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        loaded(folder, **options)
    assert "\n" not in str(err.value)
    return err.value


def test_a_mismatched_option_names_the_key_and_the_value(tmp_path):
    save("clip", tmp_path)
    err = error(tmp_path, **{**OPTIONS["clip"], "image_size": 32})
    assert err.key == "image_size"
    assert err.message == (f"the pretrained model in {tmp_path} expects 16, got 32: set "
                           f"providers.encoder.vit.image_size: 16")
    err = error(tmp_path, **{**OPTIONS["clip"], "heads": 4, "layers": 3, "mlp_mult": 4})
    assert err.key == "layers" and err.message.endswith("set providers.encoder.vit.layers: 2, heads: 2, mlp_mult: 2")


def test_a_scratch_profile_pointed_at_clip_lists_everything_to_set(tmp_path):
    save("clip", tmp_path)
    err = error(tmp_path)
    assert err.key == "channels" and err.message.endswith(
        "set providers.encoder.vit.channels: 3, width: 32, class_token: true, layout: clip, activation: quick_gelu, "
        "mlp_mult: 2")


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("patch_size", 8, "4"), ("class_token", True, "false"), ("layout", "clip", "siglip"),
    ("activation", "gelu", "gelu_tanh"), ("width", 64, "32"), ("mlp_width", 80, "64"),
])
def test_each_option_is_checked(tmp_path, option, value, expected):
    save("siglip", tmp_path)
    options = {**OPTIONS["siglip"], option: value}
    if option == "patch_size":
        options["image_size"] = 16
    err = error(tmp_path, **options)
    assert err.key == option and f"expects {expected}, got " in err.message
    assert f"set providers.encoder.vit.{option}: {expected}" in err.message


def test_a_missing_folder_or_file_is_one_clear_line(tmp_path):
    err = error(tmp_path / "nowhere", **OPTIONS["clip"])
    assert err.key == "pretrained" and "no folder" in err.message and "nowhere" in err.message
    assert "never downloads" in error("openai/clip-vit-base-patch32", **OPTIONS["clip"]).message
    err = error(tmp_path, **OPTIONS["clip"])
    assert err.key == "pretrained" and "has no config.json" in err.message
    save("clip", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    err = error(tmp_path, **OPTIONS["clip"])
    assert err.key == "pretrained" and "has no model.safetensors" in err.message


def test_broken_files_are_one_clear_line(tmp_path):
    save("siglip", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 20)
    err = error(tmp_path, **OPTIONS["siglip"])
    assert err.key == "pretrained" and "cannot read the weights" in err.message
    (tmp_path / "config.json").write_text("{not json")
    err = error(tmp_path, **OPTIONS["siglip"])
    assert err.key == "pretrained" and "cannot read" in err.message and "config.json" in err.message
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    err = error(tmp_path, **OPTIONS["siglip"])
    assert "describes a whisper; encoder.vit loads CLIP and SigLIP vision towers" in err.message


def test_weights_that_disagree_with_config_json(tmp_path):
    save("siglip", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    err = error(tmp_path, **{**OPTIONS["siglip"], "layers": 1})
    assert "holds more than the 1 layers its config.json declares" in err.message



def test_weights_of_another_shape_than_config_json_says(tmp_path):
    save("clip", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    err = error(tmp_path, **{**OPTIONS["clip"], "mlp_mult": 3})
    assert err.key == "pretrained" and "a weight for blocks.0.fc.weight has shape (64, 32), the encoder's is (96, 32)" \
        in err.message
