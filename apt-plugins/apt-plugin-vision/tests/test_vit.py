"""encoder.vit's module: the shapes the builder relies on, for several configs, and its config checks."""

from __future__ import annotations

import pytest
import torch

from apt import ConfigError, MediaEncoder, ModelDims
from apt_plugin_vision.provider import ViTConfig, ViTProvider

DIMS = ModelDims(n_layer=2, n_head=2, d_model=32, block_size=16, vocab_size=11)

CONFIGS = [
    {},
    {"image_size": 8, "patch_size": 8},
    {"image_size": 24, "patch_size": 4, "channels": 3, "class_token": True, "layout": "clip",
     "activation": "quick_gelu"},
    {"image_size": 16, "patch_size": 2, "width": 24, "heads": 3, "layers": 3, "mlp_mult": 2},
    {"image_size": 9, "patch_size": 3, "channels": 3, "width": 16, "heads": 4, "mlp_width": 20,
     "activation": "gelu_tanh"},
]


@pytest.mark.parametrize("options", CONFIGS)
def test_shapes_tokens_and_gradients(options):
    provider = ViTProvider(ViTConfig(**options))
    provider.check(DIMS)
    torch.manual_seed(0)
    module = provider.build(DIMS)
    c = provider.config
    width = c.width or DIMS.d_model
    assert isinstance(module, MediaEncoder)
    assert module.n_tokens == provider.tokens() == (c.image_size // c.patch_size) ** 2 + int(c.class_token)
    assert module.d_out == width
    images = torch.randn(3, c.channels, c.image_size, c.image_size, requires_grad=True)
    out = module(images)
    assert out.shape == (3, provider.tokens(), width) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    grads = {name: p.grad for name, p in module.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [
        n for n, g in grads.items() if g is None]
    assert all(g.abs().sum() > 0 for g in grads.values())


def test_items_are_encoded_independently():
    """One image's features do not depend on what else is in the batch (no cross-item mixing)."""
    module = ViTProvider(ViTConfig(channels=3, class_token=True)).build(DIMS).eval()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        together = module(images)
        alone = torch.cat([module(images[i:i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_class_token_is_first_and_learned():
    module = ViTProvider(ViTConfig(class_token=True)).build(DIMS)
    assert module.n_tokens == 17 and module.cls is not None and module.cls.shape == (32,)
    without = ViTProvider(ViTConfig()).build(DIMS)
    assert without.n_tokens == 16 and without.cls is None and "cls" not in without.state_dict()
    # Two blank images differ only through what the patches see: the class slot is identical for both
    # before the blocks mix it, so the learned token is what sits at position 0.
    with torch.no_grad():
        module.pos.zero_()
        for block in module.blocks:
            for p in block.parameters():
                p.zero_()
        out = module(torch.zeros(2, 1, 16, 16))
    assert torch.allclose(module.norm(module.cls[None])[0], out[0, 0], atol=1e-6)


def test_layouts_put_the_layer_norms_where_clip_and_siglip_do():
    siglip = ViTProvider(ViTConfig(layout="siglip")).build(DIMS).state_dict()
    clip = ViTProvider(ViTConfig(layout="clip", class_token=True)).build(DIMS).state_dict()
    assert "patch.bias" in siglip and "norm.weight" in siglip and "pre_norm.weight" not in siglip
    assert "patch.bias" not in clip and "norm.weight" not in clip and "pre_norm.weight" in clip


def test_same_seed_same_module_and_a_state_dict_round_trip():
    provider = ViTProvider(ViTConfig(channels=3, class_token=True))
    torch.manual_seed(3)
    a = provider.build(DIMS)
    torch.manual_seed(3)
    b = provider.build(DIMS)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    torch.manual_seed(4)
    c = provider.build(DIMS)
    c.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(a.eval()(x), c.eval()(x))


def test_width_defaults_to_d_model():
    provider = ViTProvider(ViTConfig())
    assert provider.build(ModelDims(n_layer=1, n_head=4, d_model=48, block_size=8, vocab_size=5)).d_out == 48


@pytest.mark.parametrize(("options", "key", "fragment"), [
    ({"image_size": 15, "patch_size": 4}, "patch_size", "must divide image_size 15"),
    ({"channels": 2}, "channels", "expected 1 (grayscale) or 3 (RGB), got 2"),
    ({"heads": 3}, "heads", "must divide the encoder width 32"),
    ({"width": 30, "heads": 4}, "heads", "must divide the encoder width 30"),
])
def test_check_names_the_option(options, key, fragment):
    with pytest.raises(ConfigError) as err:
        ViTProvider(ViTConfig(**options)).check(DIMS)
    assert err.value.key == key and fragment in err.value.message and "\n" not in str(err.value)


def test_a_wrong_input_size_is_a_clear_error():
    module = ViTProvider(ViTConfig()).build(DIMS)
    with pytest.raises(ValueError, match=r"expects images of shape \(M, 1, 16, 16\), got \(2, 3, 16, 16\)"):
        module(torch.zeros(2, 3, 16, 16))


def test_self_test_is_one_line():
    summary = ViTProvider(ViTConfig(channels=3, image_size=32, patch_size=8, class_token=True)).self_test()
    assert summary.startswith("vit: a 32x32 PNG decodes to (3, 32, 32) and encodes to 17 finite feature vectors")
    assert "\n" not in summary
