"""The quant providers in process: what they rewrite, what they refuse, how a quantised file reloads."""

import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch
from torch import nn

from apt import checkpoint as ckpt
from apt.errors import AptError, CheckpointError
from apt.model import ModelBuilder
from apt.profile import load_profile
from apt.registry import Registry, default_registry
from apt.tokenizers import CharTokenizer

VOCAB = 20


def build(*overrides):
    profile = load_profile("tiny_debug", ["model.n_layer=2", "model.d_model=32", "model.n_head=2",
                                          "model.block_size=16", "model.attention=sdpa", *overrides])
    torch.manual_seed(0)
    built = ModelBuilder(profile, VOCAB).build()
    return built.model.eval(), profile, built.providers


def quant(method, **options):
    return default_registry().make("quant", method, options)


def tokens(batch=3, length=16):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def linears(model):
    return [name for name, m in model.named_modules() if type(m) is nn.Linear]


def test_int8_dynamic_quantises_every_linear_and_stays_close():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    model, _, _ = build()
    names = linears(model)
    q = quant("int8_dynamic").apply(model)
    assert not linears(q), "every nn.Linear is replaced"
    replaced = {name for name, m in q.named_modules() if isinstance(m, DynamicLinear)}
    assert replaced == set(names) and "lm_head" in replaced and len(names) == 2 * 4 + 1
    assert q.blocks[0].attn.qkv.weight().qscheme() == torch.per_channel_affine
    assert linears(model) == names, "the model passed in is left as it was"
    x = tokens()
    with torch.no_grad():
        ref, out = model(x).logits, q(x).logits
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()


def test_int8_dynamic_options():
    model, _, _ = build()
    q = quant("int8_dynamic", per_channel=False, head=False).apply(model)
    assert linears(q) == ["lm_head"]
    assert q.blocks[0].mlp.fc.weight().qscheme() == torch.per_tensor_affine


def test_bf16_casts_every_floating_weight():
    model, _, _ = build()
    q = quant("bf16").apply(model)
    assert {p.dtype for p in q.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    x = tokens()
    with torch.no_grad():
        ref, out = model(x).logits, q(x).logits.float()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


class RawExperts(nn.Module):
    """Experts held as one batched weight Parameter, the way fused MoE kernels keep them."""

    def __init__(self, d: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, d, d))
        self.gate = nn.Linear(d, 4)

    def forward(self, x):
        return torch.einsum("bti,eio->bto", x, self.w) + self.gate(x).sum()


def test_int8_refuses_weights_outside_linear_layers():
    from apt.testing import tiny_model

    model = tiny_model()
    model.blocks[1].mlp = RawExperts(model.dims.d_model)
    with pytest.raises(AptError) as info:
        quant("int8_dynamic").apply(model)
    message = str(info.value)
    assert "blocks.1.mlp (RawExperts)" in message and "4x32x32 weight 'w'" in message and "--method bf16" in message
    assert "\n" not in message
    assert quant("bf16").apply(model).blocks[1].mlp.w.dtype == torch.bfloat16, "bf16 takes the same model"


def test_int8_refuses_a_router_that_reads_its_linear_weight():
    pytest.importorskip("apt_plugin_moe")
    model, _, _ = build("model.router=topk_moe", "providers.router.topk_moe.experts=2",
                        "providers.router.topk_moe.top_k=1")
    with pytest.raises(AptError, match=r"cannot reach blocks\.0\.mlp\.router \(Linear\), whose weight its parent "
                                       r"reads directly .*\(and 1 more like it\); use --method bf16 instead$"):
        quant("int8_dynamic").apply(model)


def test_int8_quantises_tri_vein_attention_through_its_inference_form(tmp_path):
    pytest.importorskip("apt_plugin_tva")
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from apt_plugin_tva.attention import FoldedTriVein, TriVeinAttention

    model, profile, providers = build("model.attention=tva", "model.bias=true")
    with torch.no_grad():  # veins away from their orthonormal start, as after training
        for name, p in model.named_parameters():
            if name.split(".")[-1] in ("vein", "lift", "normal", "normal_lift"):
                p.add_(0.1 * torch.randn_like(p))
    q = quant("int8_dynamic").apply(model)
    assert not linears(q), "every nn.Linear is replaced"
    assert isinstance(model.blocks[0].attn, TriVeinAttention), "the model passed in is left as it was"
    attn = q.blocks[0].attn
    assert type(attn) is FoldedTriVein
    assert {n for n, m in attn.named_children() if isinstance(m, DynamicLinear)} == {"in_proj", "value", "out_proj"}
    assert attn.in_proj.weight().qscheme() == torch.per_channel_affine and "lm_head" in dict(q.named_modules())
    x = tokens()
    with torch.no_grad():
        ref, out = model(x).logits, q(x).logits
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()

    state = {"step": 5, "profile": profile.to_dict(), "providers": providers,
             "tokenizer": CharTokenizer("abcdefghijklmnopqrst").state(), "model": q.state_dict(),
             "quant": {"method": "int8_dynamic", "options": {}, "plugin_version": "1.0.0"}}
    assert {"blocks.0.attn.vein", "blocks.0.attn.lift"} <= set(state["model"])
    ckpt.save_file(tmp_path / "out" / "model.pt", state)
    loaded = ckpt.load_model(tmp_path / "out")
    assert type(loaded.model.blocks[1].attn) is FoldedTriVein
    with torch.no_grad():
        assert torch.equal(loaded.model(x).logits, q(x).logits)


def test_inference_forms_swaps_only_modules_that_have_one():
    from apt.testing import tiny_model
    from apt_plugin_quant.quantize import inference_forms

    class Folded(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.lin = nn.Linear(layer.lin.in_features, layer.lin.out_features)
            self.lin.load_state_dict(layer.lin.state_dict())

        def forward(self, x):
            return self.lin(x)

    class Foldable(nn.Module):
        def __init__(self, d=8):
            super().__init__()
            self.lin = nn.Linear(d, d)
            self.inner = RawExperts(d)  # a child of a replaced module is not visited

        def forward(self, x):
            return self.lin(x)

        def inference_form(self):
            return Folded(self)

    plain = nn.Sequential(nn.Linear(8, 8))
    assert inference_forms(plain) is plain
    model = nn.Sequential(nn.Linear(8, 8), nn.Sequential(Foldable()), Foldable())
    swapped = inference_forms(model)
    assert [type(m) for m in (swapped[1][0], swapped[2], model[1][0], model[2])] == [Folded, Folded, Foldable, Foldable]
    assert type(inference_forms(Foldable())) is Folded
    lm = tiny_model()
    lm.blocks[0].mlp = Foldable(lm.dims.d_model)
    q = quant("int8_dynamic").apply(lm)
    assert not linears(q) and type(q.blocks[0].mlp) is Folded
    x = torch.randint(0, lm.dims.vocab_size, (2, lm.dims.block_size))
    with torch.no_grad():
        ref = lm(x).logits
        assert (q(x).logits - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("method", ["int8_dynamic", "bf16"])
def test_quantised_file_reloads_through_load_model(tmp_path, method):
    model, profile, providers = build()
    provider = quant(method)
    q = provider.apply(model)
    state = {"step": 5, "profile": profile.to_dict(), "providers": providers,
             "tokenizer": CharTokenizer("abcdefghijklmnopqrst").state(), "model": q.state_dict(),
             "quant": {"method": method, "options": {}, "plugin_version": "1.0.0"}}
    path = ckpt.save_file(tmp_path / "out" / "model.pt", state)
    loaded = ckpt.load_model(tmp_path / "out")
    assert loaded.path == path and loaded.state["quant"]["method"] == method
    assert type(loaded.model.blocks[0].mlp.fc) is type(q.blocks[0].mlp.fc)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded.model(x).logits, q(x).logits)

    without = Registry([ep for ep in entry_points(group="apt.providers") if not ep.name.startswith("quant.")])
    with pytest.raises(CheckpointError, match=rf"is quantised with quant\.{method}: pip install apt-plugin-quant$"):
        ckpt.load_model(path, registry=without)


def test_registered_self_tested_and_torch_free_at_import():
    for method in ("int8_dynamic", "bf16"):
        assert default_registry().info("quant", method).distribution == "apt-plugin-quant"
        assert quant(method).self_test().startswith(f"{method}: tiny model within")
    code = ("import sys, apt_plugin_quant.provider, apt_plugin_quant.cli; "
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
