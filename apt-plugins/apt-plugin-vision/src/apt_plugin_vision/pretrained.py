"""A Hugging Face CLIP or SigLIP vision tower, read from a local folder into :class:`ViT`.

Only ``json`` and ``safetensors`` are used: a published tower must load offline, without
``transformers`` (its model classes would drag its import graph into every run), and without
unpickling anything. The profile describes the module's shape, so a tower that does not match it
is refused with the option to change, rather than loaded into a module of another shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apt import ConfigError
from apt_plugin_vision.provider import LAYOUTS, ViTConfig

if TYPE_CHECKING:
    import torch

    from apt_plugin_vision.vit import ViT

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
#: What the Hugging Face config classes assume when config.json leaves a key out (it may write only
#: the values that differ from the class defaults, notably inside a CLIPModel's vision_config).
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
             "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
             "layer_norm_eps": 1e-5},
    "siglip": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "num_channels": 3, "image_size": 224, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh",
               "layer_norm_eps": 1e-6},
}
#: Hugging Face ``hidden_act`` -> the EncoderBlock activation computing the same function.
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
PATCH_KEY = "embeddings.patch_embedding.weight"


@dataclass(frozen=True)
class Tower:
    """A vision tower's shape as its config.json describes it."""

    folder: Path
    layout: str
    image_size: int
    patch_size: int
    channels: int
    width: int
    layers: int
    heads: int
    mlp_width: int
    activation: str
    eps: float

    def options(self) -> dict[str, Any]:
        """The ``encoder.vit`` options a module must have to hold this tower, in the order to report them."""
        return {"image_size": self.image_size, "patch_size": self.patch_size, "channels": self.channels,
                "width": self.width, "layers": self.layers, "heads": self.heads,
                "class_token": self.layout == "clip", "layout": self.layout, "activation": self.activation}


def load_into(module: ViT, folder: Path, config: ViTConfig) -> None:
    """Fill ``module`` (built from ``config``) with the tower in ``folder``; ConfigError when it does not fit."""
    tower = read_config(folder)
    check_options(tower, config, module)
    state = to_vit_state(tower, read_weights(tower))
    own = module.state_dict()
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise ConfigError("pretrained", f"{_where(tower)}: a weight for {key} has shape {tuple(tensor.shape)}, "
                                            f"the encoder's is {tuple(own[key].shape)}: config.json does not "
                                            f"describe these weights")
    missing = sorted(set(own) - set(state))
    if missing:
        raise ConfigError("pretrained", f"{_where(tower)} has no weights for {', '.join(missing)}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def read_config(folder: Path) -> Tower:
    if not folder.is_dir():
        raise ConfigError("pretrained", f"no folder {str(folder)!r}: expected a Hugging Face CLIP or SigLIP vision "
                                        f"model saved with save_pretrained ({CONFIG} and {WEIGHTS}); encoder.vit "
                                        f"reads local folders only and never downloads")
    file = folder / CONFIG
    if not file.is_file():
        raise ConfigError("pretrained", f"{str(folder)!r} has no {CONFIG}: expected a Hugging Face CLIP or SigLIP "
                                        f"vision model saved with save_pretrained")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError("pretrained", f"cannot read {file}: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError("pretrained", f"{file} is not a JSON object")
    nested = raw.get("vision_config")
    vision: dict[str, Any] = nested if isinstance(nested, dict) else raw
    model_type = str(vision.get("model_type") or raw.get("model_type") or "")
    layout = "siglip" if "siglip" in model_type else "clip" if "clip" in model_type else None
    if layout is None or "siglip2" in model_type:  # SigLIP 2 embeds flattened patches of varying resolution
        raise ConfigError("pretrained", f"{file} describes a {model_type or 'model without a model_type'}; "
                                        f"encoder.vit loads CLIP and SigLIP vision towers")
    values = {**HF_DEFAULTS[layout], **vision}
    act = str(values["hidden_act"])
    if act not in ACTIVATIONS:
        raise ConfigError("pretrained", f"{file}: hidden_act {act!r} is none of the activations encoder.vit "
                                        f"implements ({', '.join(ACTIVATIONS)})")
    try:
        return Tower(folder=folder, layout=layout, image_size=int(values["image_size"]),
                     patch_size=int(values["patch_size"]), channels=int(values["num_channels"]),
                     width=int(values["hidden_size"]), layers=int(values["num_hidden_layers"]),
                     heads=int(values["num_attention_heads"]), mlp_width=int(values["intermediate_size"]),
                     activation=ACTIVATIONS[act], eps=float(values["layer_norm_eps"]))
    except (TypeError, ValueError) as err:
        raise ConfigError("pretrained", f"{file}: a size is not a number: {err}") from None


def check_options(tower: Tower, config: ViTConfig, module: ViT) -> None:
    """Every option that disagrees with the tower, reported in one line keyed by the first of them."""
    ours: dict[str, Any] = {"image_size": config.image_size, "patch_size": config.patch_size,
                            "channels": config.channels, "width": module.d_out, "layers": config.layers,
                            "heads": config.heads, "class_token": config.class_token, "layout": config.layout,
                            "activation": config.activation}
    wrong = [(key, value) for key, value in tower.options().items() if ours[key] != value]
    mlp = config.mlp_width if config.mlp_width is not None else config.mlp_mult * tower.width
    if mlp != tower.mlp_width:
        if config.mlp_width is None and tower.mlp_width % tower.width == 0:
            ours["mlp_mult"] = config.mlp_mult
            wrong.append(("mlp_mult", tower.mlp_width // tower.width))
        else:
            ours["mlp_width"] = mlp
            wrong.append(("mlp_width", tower.mlp_width))
    if wrong:
        key, value = wrong[0]
        got = ours[key]
        also = "".join(f", {k}: {_yaml(v)}" for k, v in wrong[1:])
        raise ConfigError(key, f"the pretrained model in {tower.folder} expects {_yaml(value)}, got {_yaml(got)}: "
                               f"set providers.encoder.vit.{key}: {_yaml(value)}{also}")
    eps = LAYOUTS[tower.layout]["eps"]
    if tower.eps != eps:
        raise ConfigError("pretrained", f"{_where(tower)}: layer_norm_eps is {tower.eps:g}; encoder.vit's "
                                        f"{tower.layout} layout uses {eps:g}")


def read_weights(tower: Tower) -> dict[str, torch.Tensor]:
    """The tower's tensors keyed as inside the vision model (``embeddings.…``, ``encoder.layers.…``)."""
    from safetensors import SafetensorError, safe_open

    files = _weight_files(tower.folder)
    try:
        prefix = _vision_prefix(tower, [key for file in files for key in _keys(file)])
        out: dict[str, torch.Tensor] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key.startswith(prefix):
                        out[key[len(prefix):]] = f.get_tensor(key)
    except (SafetensorError, OSError) as err:
        raise ConfigError("pretrained", f"cannot read the weights in {tower.folder}: "
                                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return out


def to_vit_state(tower: Tower, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face names -> :class:`ViT` names; q, k and v stacked into one ``qkv`` as EncoderBlock takes them."""
    import torch

    def take(key: str) -> torch.Tensor:
        if key not in hf:
            raise ConfigError("pretrained", f"{_where(tower)} has no {key}: not a complete {tower.layout} "
                                            f"vision tower")
        return hf[key]

    state = {"patch.weight": take("embeddings.patch_embedding.weight"),
             "pos": take("embeddings.position_embedding.weight")}
    if tower.layout == "siglip":
        state["patch.bias"] = take("embeddings.patch_embedding.bias")
        state["norm.weight"], state["norm.bias"] = take("post_layernorm.weight"), take("post_layernorm.bias")
    else:
        # CLIP's post_layernorm acts on the pooled class token only; last_hidden_state is taken before it.
        state["cls"] = take("embeddings.class_embedding")
        state["pre_norm.weight"], state["pre_norm.bias"] = take("pre_layrnorm.weight"), take("pre_layrnorm.bias")
    for i in range(tower.layers):
        hf_block, block = f"encoder.layers.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            state[f"{block}qkv.{part}"] = torch.cat([take(f"{hf_block}self_attn.{p}_proj.{part}") for p in "qkv"])
            for ours, theirs in (("ln_1", "layer_norm1"), ("proj", "self_attn.out_proj"), ("ln_2", "layer_norm2"),
                                 ("fc", "mlp.fc1"), ("fc_out", "mlp.fc2")):
                state[f"{block}{ours}.{part}"] = take(f"{hf_block}{theirs}.{part}")
    extra = f"encoder.layers.{tower.layers}."
    if any(key.startswith(extra) for key in hf):
        raise ConfigError("pretrained", f"{_where(tower)} holds more than the {tower.layers} layers its {CONFIG} "
                                        f"declares")
    return state


def _weight_files(folder: Path) -> list[Path]:
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        try:
            index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
            return [folder / name for name in sorted(set(index["weight_map"].values()))]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError("pretrained", f"cannot read {folder / INDEX}: {err}") from None
    other = " (pytorch_model.bin is a pickle, which encoder.vit does not load: re-save it with " \
            "save_pretrained(..., safe_serialization=True))" if (folder / "pytorch_model.bin").exists() else ""
    raise ConfigError("pretrained", f"{str(folder)!r} has no {WEIGHTS}{other}")


def _keys(file: Path) -> list[str]:
    from safetensors import safe_open

    if not file.is_file():
        raise ConfigError("pretrained", f"no weights file {file}")
    with safe_open(str(file), framework="pt") as f:
        return list(f.keys())


def _vision_prefix(tower: Tower, keys: list[str]) -> str:
    """What precedes ``embeddings.…`` in the vision tower's names: ``vision_model.`` in CLIPVisionModel,
    CLIPModel and the SigLIP classes, other strings where a model wraps the tower (``model.vision_model.``)."""
    found = sorted((key[: -len(PATCH_KEY)] for key in keys
                    if key.endswith(PATCH_KEY) and "text" not in key[: -len(PATCH_KEY)]), key=len)
    if not found:
        raise ConfigError("pretrained", f"{_where(tower)} holds no vision tower (no …{PATCH_KEY})")
    return found[0]


def _where(tower: Tower) -> str:
    return f"the pretrained model in {tower.folder}"


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
