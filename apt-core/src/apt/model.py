"""A decoder-only causal language model assembled from providers.

``ModelBuilder(profile, vocab_size).build()`` resolves one provider per kind through the
registry (defaults and fallbacks apply there), validates each provider's config against the
model's shape, and wires token + position embeddings, pre-norm blocks of attention and
FFN (or a router around FFN experts), a final norm and a head tied to the token embedding.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from apt.batch import Media
from apt.errors import ConfigError, ProviderError
from apt.kvcache import KVCache, LayerCache
from apt.profile import Profile
from apt.providers import (
    MODEL_KINDS,
    AlignProvider,
    AttentionProvider,
    FFNProvider,
    Fusion,
    MediaEncoder,
    ModelDims,
    Provider,
    ResidualOutput,
    RouterProvider,
    SelfInitialised,
    SupportsKVCache,
    Switchable,
)
from apt.registry import Registry, Resolution, default_registry


class Output(NamedTuple):
    logits: torch.Tensor
    hidden: torch.Tensor


class Block(nn.Module):
    def __init__(self, dims: ModelDims, attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dims.d_model, bias=dims.bias)
        self.attn = attn
        self.ln_2 = nn.LayerNorm(dims.d_model, bias=dims.bias)
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """``forward`` for new positions only; the attention reads earlier ones from ``cache``."""
        # LanguageModel.supports_kv_cache checked the attention once; isinstance per step would cost more.
        attn = cast(SupportsKVCache, self.attn)
        x = x + attn.forward_cached(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class LanguageModel(nn.Module):
    def __init__(self, dims: ModelDims, blocks: list[Block], extras: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.dims = dims
        self.tok_emb = nn.Embedding(dims.vocab_size, dims.d_model)
        self.pos_emb = nn.Embedding(dims.block_size, dims.d_model)
        self.drop = nn.Dropout(dims.dropout)
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(dims.d_model, bias=dims.bias)
        self.lm_head = nn.Linear(dims.d_model, dims.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.extras = nn.ModuleDict(extras or {})

    def forward(self, idx: torch.Tensor, media: Media | None = None) -> Output:
        T = idx.shape[1]
        if T > self.dims.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.dims.block_size}")
        pos = torch.arange(T, device=idx.device)
        if media is not None:
            return self._forward_media(idx, pos, media)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        h = self.ln_f(x)
        return Output(self.lm_head(h), h)

    def _forward_media(self, idx: torch.Tensor, pos: torch.Tensor, media: Media) -> Output:
        """``forward`` with media: the encoders run, and the fusion module decides how their features
        reach the blocks (:class:`apt.providers.Fusion`); the model itself knows no modality."""
        if "fusion" not in self.extras:
            raise ValueError("this model has no encoders (model.encoders); it takes text only")
        encoders = cast(nn.ModuleDict, self.extras["encoders"])
        fusion = cast(Fusion, self.extras["fusion"])
        media = media.encoded({modality: encoders[modality](inputs) for modality, inputs in media.inputs.items()})
        x = self.drop(fusion.inject(self.tok_emb(idx), media) + self.pos_emb(pos))
        for layer, block in enumerate(self.blocks):
            x = fusion.after_block(layer, block(x), media)
        h = self.ln_f(x)
        return Output(self.lm_head(h), h)

    def supports_kv_cache(self) -> bool:
        """Whether every block's attention decodes incrementally (:class:`apt.providers.SupportsKVCache`)."""
        return all(isinstance(cast(Block, block).attn, SupportsKVCache) for block in self.blocks)

    def new_cache(self, batch: int) -> KVCache:
        """An empty cache for ``batch`` rows of up to ``block_size`` positions each."""
        return KVCache(self.dims.n_layer, batch, self.dims.block_size)

    def forward_cached(self, idx: torch.Tensor, cache: KVCache, starts: list[int],
                       rows: list[int] | None = None) -> Output:
        """The outputs at new tokens ``idx`` (R, T) of cache ``rows`` (None: all), row r starting at ``starts[r]``.

        Equals ``forward`` on each row's whole sequence, restricted to the new positions, as long as
        the cache holds that row's tokens at positions ``0..starts[r]-1``: a prefill starts at 0
        (shorter rows right-padded; read each row's logits at its own last token), a decoding step
        feeds one token per row at its length. Positions stop at ``block_size``: sliding past it is
        the caller's choice (:class:`apt.generate.Decoder` re-encodes the last ``block_size`` tokens).
        """
        positions = cache.prepare(rows, starts, idx.shape[1], idx.device)  # (R, T)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions))
        for block, layer in zip(self.blocks, cache.layers, strict=True):
            x = cast(Block, block).forward_cached(x, layer)
        h = self.ln_f(x)
        return Output(self.lm_head(h), h)

    def media_parts(self) -> tuple[str, ...]:
        """Names of the submodules that serve media (encoders, fusion), not the language model itself.

        What rewriters of the LM (quantisers) leave as they are: they run only when media come in.
        """
        return tuple(f"extras.{name}" for name in ("encoders", "fusion") if name in self.extras)

    def num_params(self) -> int:
        """Parameters, counting the tied head once and leaving out position embeddings (as GPT-2 does)."""
        return sum(p.numel() for p in self.parameters()) - self.pos_emb.weight.numel()


@dataclass
class BuiltModel:
    model: LanguageModel
    #: kind -> (name, version, distribution) of each provider actually used.
    providers: dict[str, dict[str, str]]
    #: Provider instances by "kind.name", to register with the plugin manager.
    instances: dict[str, Provider]
    #: switch name -> modules whose ``enabled`` flag the curriculum controls.
    switches: dict[str, list[Switchable]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class ModelBuilder:
    """``pretrained=False`` leaves encoders' published weights unread: a checkpoint's replace them."""

    def __init__(self, profile: Profile, vocab_size: int, *, registry: Registry | None = None,
                 strict: bool = False, pretrained: bool = True) -> None:
        self.profile = profile
        self.registry = registry or default_registry()
        self.strict = strict
        self.pretrained = pretrained
        m = profile.model
        self.dims = ModelDims(m.n_layer, m.n_head, m.d_model, m.block_size, vocab_size, m.dropout, m.bias)

    def resolve(self) -> dict[str, Resolution]:
        m = self.profile.model
        return {kind: self.registry.resolve(kind, getattr(m, kind), strict=self.strict) for kind in MODEL_KINDS}

    def build(self) -> BuiltModel:
        resolutions = self.resolve()
        instances: dict[str, Provider] = {}
        for kind, res in resolutions.items():
            if res.provider is not None:
                provider = res.provider(self.profile.provider_config(res.provider))
                try:
                    provider.check(self.dims)
                except ConfigError as err:
                    raise ConfigError(f"providers.{kind}.{res.name}.{err.key}", err.message) from None
                instances[kind] = provider
        dims = self.dims
        # The registry checked each class against its kind's interface; these narrow the types.
        attention, ffn = instances["attention"], instances["ffn"]
        router, align = instances.get("router"), instances.get("align")
        assert isinstance(attention, AttentionProvider) and isinstance(ffn, FFNProvider)
        assert router is None or isinstance(router, RouterProvider)
        assert align is None or isinstance(align, AlignProvider)
        switches: dict[str, list[Switchable]] = {}
        blocks = []
        for layer in range(dims.n_layer):
            attn = attention.build(dims, layer)
            if router is not None:
                mlp = router.build(dims, layer, functools.partial(ffn.build, dims, layer))
                _add_switch(switches, router, mlp)
            else:
                mlp = ffn.build(dims, layer)
                _add_switch(switches, ffn, mlp)
            _add_switch(switches, attention, attn)
            blocks.append(Block(dims, attn, mlp))
        extras = {}
        if align is not None:
            extras["align"] = align.build(dims)
            _add_switch(switches, align, extras["align"])
        model = LanguageModel(dims, blocks, extras)
        init_weights(model)
        used = {kind: {"name": res.info.name, "version": res.info.version, "distribution": res.info.distribution}
                for kind, res in resolutions.items() if res.info is not None}
        warnings = [res.warning for res in resolutions.values() if res.warning]
        built = BuiltModel(model, used, {f"{p.kind}.{p.name}": p for p in instances.values()}, switches, warnings)
        if self.profile.model.encoders:
            self._add_media(built)
        return built

    def _add_media(self, built: BuiltModel) -> None:
        """Encoders and fusion join the model after the LM is initialised, so the LM's weights are
        the ones a text-only build with the same seed gets (and ``fusion.xattn`` starts as identity)."""
        from apt.media import MediaSpec

        spec = MediaSpec.from_profile(self.profile, self.registry)
        assert spec is not None
        encoders = nn.ModuleDict()
        for modality, provider in spec.encoders.items():
            self._check(provider)
            module = provider.build(self.dims)
            if not isinstance(module, MediaEncoder) or module.n_tokens != provider.tokens():
                raise ProviderError(f"encoder.{provider.name} built {type(module).__name__}, which is not an "
                                    f"apt.providers.MediaEncoder with n_tokens == tokens() ({provider.tokens()})")
            encoders[modality] = module
            _add_switch(built.switches, provider, module)
        shapes = {m: (cast(MediaEncoder, e).n_tokens, cast(MediaEncoder, e).d_out) for m, e in encoders.items()}
        self._check(spec.fusion)
        fusion = spec.fusion.build(self.dims, shapes)
        if not isinstance(fusion, Fusion):
            raise ProviderError(f"fusion.{spec.fusion.name} built {type(fusion).__name__}, which is not an "
                                f"apt.providers.Fusion (inject, after_block)")
        _add_switch(built.switches, spec.fusion, fusion)
        for module in (encoders, fusion):
            init_weights(module, built.model.dims.n_layer)
        if self.pretrained:
            for modality, provider in spec.encoders.items():
                try:
                    provider.load_pretrained(encoders[modality])
                except ConfigError as err:
                    raise ConfigError(f"providers.encoder.{provider.name}.{err.key}", err.message) from None
        built.model.extras["encoders"] = encoders
        built.model.extras["fusion"] = fusion
        used: dict[str, Provider] = {f"encoder.{m}": p for m, p in spec.encoders.items()}
        used["fusion"] = spec.fusion
        for key, part in used.items():
            info = self.registry.info(part.kind, part.name)
            if info is not None:
                built.providers[key] = {"name": info.name, "version": info.version, "distribution": info.distribution}
            built.instances[f"{part.kind}.{part.name}"] = part

    def _check(self, provider: Provider) -> None:
        try:
            provider.check(self.dims)
        except ConfigError as err:
            raise ConfigError(f"providers.{provider.kind}.{provider.name}.{err.key}", err.message) from None


def _add_switch(switches: dict[str, list[Switchable]], provider: Provider, module: nn.Module) -> None:
    if not provider.switch:
        return
    if not isinstance(module, Switchable):
        raise ProviderError(f"{provider.kind}.{provider.name} declares curriculum switch {provider.switch!r} but "
                            f"its module {type(module).__name__} has no 'enabled' attribute "
                            f"(see apt.providers.Switchable)")
    switches.setdefault(provider.switch, []).append(module)


def init_weights(model: nn.Module, n_layer: int | None = None) -> None:
    """GPT-2 initialisation: N(0, 0.02), residual output projections scaled by 1/sqrt(2 n_layer).

    Modules a provider initialised itself (:class:`apt.providers.SelfInitialised`) are left alone.
    ``n_layer`` defaults to the depth of ``model``, a :class:`LanguageModel`.
    """
    depth = n_layer if n_layer is not None else cast(LanguageModel, model).dims.n_layer
    residual_std = 0.02 / math.sqrt(2 * depth)
    for module in model.modules():
        if isinstance(module, SelfInitialised) and module.apt_init_done:
            continue
        if isinstance(module, nn.Linear):
            std = residual_std if isinstance(module, ResidualOutput) and module.apt_residual else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)


def set_switch(built: BuiltModel, switch: str, enabled: bool) -> None:
    for module in built.switches.get(switch, ()):
        module.enabled = enabled


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
