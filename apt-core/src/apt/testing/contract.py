"""The provider conformance suite: what every provider must do, checked the way the kernel uses it.

Each ``check_*`` function raises ``AssertionError`` naming the broken promise; :func:`check_provider`
runs them all. The checks build the provider through a registry that holds only it and the
core's built-ins, so they work before the package is installed, and run any training in a
temporary ``APT_HOME`` so a user's caches and error store are never touched.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import typing
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apt import config as cfg
from apt.errors import AptError, ProviderError
from apt.providers import (
    MODEL_KINDS,
    AlignProvider,
    AttentionProvider,
    EncoderProvider,
    EvidenceAligner,
    FFNProvider,
    Fusion,
    FusionProvider,
    HasInferenceForm,
    MediaEncoder,
    ModelDims,
    Provider,
    QuantProvider,
    RetrieverProvider,
    RouterProvider,
    SupportsKVCache,
    Switchable,
    TokenizerProvider,
    VoterProvider,
    check_provider_class,
)
from apt.registry import GROUP, Registry

if TYPE_CHECKING:
    from torch import nn

    from apt.model import LanguageModel

#: Shapes every model-part provider is built for: several widths, head counts and depths.
DIMS = (
    ModelDims(n_layer=2, n_head=2, d_model=32, block_size=16, vocab_size=11),
    ModelDims(n_layer=1, n_head=4, d_model=64, block_size=8, vocab_size=7),
    ModelDims(n_layer=3, n_head=1, d_model=48, block_size=12, vocab_size=5),
)
_BUILTINS = {"attention.sdpa": "apt.builtin.providers:SDPAProvider", "ffn.dense": "apt.builtin.providers:DenseFFNProvider",
             "tokenizer.char": "apt.tokenizers:CharProvider", "tokenizer.byte": "apt.tokenizers:ByteProvider",
             "fusion.prefix": "apt.builtin.fusion:PrefixFusionProvider",
             "fusion.xattn": "apt.builtin.fusion:XAttnFusionProvider"}
_CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40
#: Text a tokenizer is trained on (with the corpus) and must round-trip: accents, CJK, emoji, combining marks.
UNICODE_TEXT = "Grüße aus Köln — naïve café; 東京の夜 🙂👍🏽 e\u0301 ∑x² «quoted»\n"
#: Text no tokenizer saw in training: encoded whole where ``encodable`` keeps it whole.
UNSEEN_TEXT = "Zebras ǅ ⟨ψ|φ⟩ 🚀 Ωmega\tend"
#: Kinds the trainer uses directly (model parts, and the tokenizer through data.tokenizer).
TRAINED_KINDS = (*MODEL_KINDS, "encoder", "tokenizer")


def check_provider(provider: type[Provider], options: Mapping[str, Any] | None = None,
                   dims: tuple[ModelDims, ...] = DIMS, media_sample: Path | None = None) -> None:
    """Every check below, in order; ``options`` configure the provider as a profile would, and an
    encoder is fed ``media_sample`` (a file of its modality)."""
    check_torch_free_import(provider)
    check_declaration(provider)
    check_config_fields(provider)
    check_self_test(provider, options)
    check_behaviour(provider, options, dims, media_sample)
    if provider.kind in TRAINED_KINDS:
        check_trains(provider, options, media_sample=media_sample)


def check_behaviour(provider: type[Provider], options: Mapping[str, Any] | None = None,
                    dims: tuple[ModelDims, ...] = DIMS, media_sample: Path | None = None) -> None:
    """What the provider builds does its kind's job: modules for model parts, the service object otherwise."""
    if issubclass(provider, EncoderProvider):
        assert media_sample is not None, (f"{provider.__name__}: an encoder's conformance test needs a sample "
                                          f"{provider.modality} file (override the media_sample fixture)")
        check_encoder(provider, media_sample, options, dims)
    elif issubclass(provider, FusionProvider):
        check_fusion(provider, options, dims)
    elif provider.kind in MODEL_KINDS:
        check_modules(provider, options, dims)
        if provider.kind == "attention":
            check_cached_generation(provider, options)
    elif issubclass(provider, RetrieverProvider):
        check_retriever(provider, options)
    elif issubclass(provider, VoterProvider):
        check_voter(provider, options)
    elif issubclass(provider, QuantProvider):
        check_quant(provider, options)
    elif issubclass(provider, TokenizerProvider):
        check_tokenizer(provider, options)


def check_torch_free_import(provider: type[Provider]) -> None:
    """Importing the provider's module in a fresh interpreter must not import torch (``apt plugin list``)."""
    module = provider.__module__
    code = f"import importlib, sys; importlib.import_module({module!r}); sys.exit(3 if 'torch' in sys.modules else 0)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 3, (f"importing {module} imports torch: import it inside build() (or under "
                                  f"TYPE_CHECKING) so apt plugin list stays fast")
    assert proc.returncode == 0, f"importing {module} fails in a fresh interpreter:\n{proc.stderr.strip()}"


def check_declaration(provider: type[Provider]) -> None:
    """kind, name and Config pass the kernel's own contract check (the registry's and the sandbox's)."""
    try:
        check_provider_class(provider, f"{getattr(provider, 'kind', '?')}.{getattr(provider, 'name', '?')}")
    except ProviderError as err:
        raise AssertionError(f"{provider.__name__}: {err}") from None
    assert provider.name.isidentifier() and provider.name == provider.name.lower(), (
        f"{provider.__name__}.name {provider.name!r} must be a lower-case identifier (it is a profile key)")
    assert provider.sandbox in ("allowed", "required"), (
        f"{provider.__name__}.sandbox must be 'allowed' or 'required', got {provider.sandbox!r}")


def check_config_fields(provider: type[Provider]) -> None:
    """Every config field has a default, a doc, and numeric fields declare bounds (apt.config.option)."""
    hints = typing.get_type_hints(provider.Config)
    for f in dataclasses.fields(provider.Config):
        where = f"{provider.__name__}.Config.{f.name}"
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        assert has_default, f"{where} has no default: every option must work unset"
        assert f.metadata.get("doc"), f"{where} has no doc: declare it with option(default, doc='...')"
        if _numeric(hints[f.name]):
            bounds = [b for b in ("ge", "gt", "le", "lt") if f.metadata.get(b) is not None]
            assert bounds, f"{where} is numeric but declares no bounds: option(default, ge=..., le=..., doc=...)"


def check_self_test(provider: type[Provider], options: Mapping[str, Any] | None = None) -> None:
    """``self_test()`` passes with the given config and returns a one-line summary or None."""
    outcome = _instance(provider, options).self_test()
    assert outcome is None or (isinstance(outcome, str) and "\n" not in outcome.strip()), (
        f"{provider.__name__}.self_test() must return one line of text or None, got {outcome!r}")


def check_modules(provider: type[Provider], options: Mapping[str, Any] | None = None,
                  dims: tuple[ModelDims, ...] = DIMS) -> None:
    """Built modules: shapes, finite forward and backward, determinism, state-dict and ``torch.save``
    round trips, causality, and the capabilities they declare (a KV cache: :func:`check_kv_cache`)."""
    import torch

    instance = _instance(provider, options)
    for d in dims:
        instance.check(d)
        torch.manual_seed(0)
        module = _build(instance, d)
        torch.manual_seed(0)
        twin = _build(instance, d)
        torch.manual_seed(1)
        other = _build(instance, d)
        name = f"{provider.__name__} built for {d}"
        _assert_same_state(module, twin, f"{name}: two builds under one seed differ")
        if provider.kind == "align":
            _check_aligner(module, d, name)
        else:
            _check_block_module(module, d, name)
        other.load_state_dict(module.state_dict())
        _assert_same_state(module, other, f"{name}: load_state_dict does not restore the weights")
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        buffer.seek(0)
        other.load_state_dict(torch.load(buffer, weights_only=True))
        _assert_same_state(module, other, f"{name}: the state dict does not survive torch.save/weights_only load")
        if provider.switch is not None:
            assert isinstance(module, Switchable), (
                f"{name}: the provider declares switch {provider.switch!r} but its module has no 'enabled' "
                f"attribute (apt.providers.Switchable)")
            if provider.kind != "align":
                module.enabled = False
                _check_block_module(module, d, f"{name} with its switch off", causal=False)
                module.enabled = True


def check_cached_generation(provider: type[Provider], options: Mapping[str, Any] | None = None,
                            steps: int = 40) -> None:
    """For an attention provider whose modules are :class:`apt.SupportsKVCache`: a tiny model decodes
    ``steps`` tokens (past its block size of 16, so the window slides) with the cache and by full
    recompute, for two rows of different lengths; every step's logits agree within 1e-5 and greedy
    tokens are identical. Providers without the capability are skipped (generation recomputes)."""
    import torch

    from apt.generate import Decoder
    from apt.model import ModelBuilder
    from apt.profile import Profile

    model_config: dict[str, Any] = {"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 16,
                                    "attention": provider.name, "ffn": "dense"}
    profile = cfg.build(Profile, {"model": model_config,
                                  "providers": {provider.kind: {provider.name: dict(options or {})}}})
    torch.manual_seed(0)
    model = ModelBuilder(profile, 13, registry=_registry(provider), strict=True).build().model.eval()
    if not model.supports_kv_cache():
        return
    cached, full = Decoder(model, 2), Decoder(model, 2, use_cache=False)
    prompts = [[1, 2, 3], [(5 * i) % 13 for i in range(20)]]
    with torch.no_grad():
        a, b = cached.start([0, 1], prompts), full.start([0, 1], prompts)
        for step in range(steps):
            error = (a - b).abs().max().item()
            assert error <= 1e-5, (f"{provider.__name__}: cached logits differ from full recompute by {error:.2e} "
                                   f"at step {step}")
            tokens = a.argmax(dim=-1).tolist()
            assert tokens == b.argmax(dim=-1).tolist(), f"{provider.__name__}: greedy tokens differ at step {step}"
            a, b = cached.step([0, 1], tokens), full.step([0, 1], tokens)


def check_trains(provider: type[Provider], options: Mapping[str, Any] | None = None, steps: int = 3, *,
                 media_sample: Path | None = None) -> None:
    """The real trainer runs ``steps`` optimizer steps of a tiny model using the provider (hooks included)
    with finite losses, then writes a checkpoint that loads back (an encoder trains on records that
    pair ``media_sample`` with short texts)."""
    from apt.checkpoint import load_model
    from apt.profile import Profile
    from apt.trainer import Trainer

    with _scratch() as tmp:
        corpus = tmp / "corpus.txt"
        corpus.write_text(_CORPUS, encoding="utf-8")
        model: dict[str, Any] = {"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 16, "dropout": 0.1,
                                 "attention": "sdpa", "ffn": "dense"}
        data: dict[str, Any] = {"train_path": str(corpus)}
        if provider.kind == "tokenizer":
            data["tokenizer"] = provider.name
        elif issubclass(provider, EncoderProvider):
            assert media_sample is not None, f"{provider.__name__}: training an encoder needs a media_sample"
            data["train_path"] = str(_media_corpus(tmp, provider.modality, media_sample))
            model["encoders"] = {provider.modality: provider.name}
            encoder = _instance(provider, options)
            assert isinstance(encoder, EncoderProvider)
            model["block_size"] = 16 + encoder.tokens()
        else:
            model[provider.kind] = provider.name
        profile = cfg.build(Profile, {
            "name": "contract", "data": data, "model": model,
            "train": {"max_iters": steps, "batch_size": 2, "eval_interval": steps, "eval_iters": 1,
                      "warmup_iters": 1, "device": "cpu"},
            "checkpoint": {"dir": str(tmp / "run"), "every": steps},
            "logging": {"jsonl": True, "tensorboard": False, "progress": False},
            "providers": {provider.kind: {provider.name: dict(options or {})}},
            "plugins": {f"{provider.kind}.{provider.name}": {"required": True}},
        })
        registry = _registry(provider)
        trainer = Trainer(profile, registry=registry, strict=True, echo=lambda _: None)
        used = f"encoder.{provider.modality}" if issubclass(provider, EncoderProvider) else provider.kind
        if provider.kind != "tokenizer":
            assert trainer.built.providers[used]["name"] == provider.name
        result = trainer.run()
        assert result.step == steps and result.stop_reason == "finished", result
        losses = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        step_losses = [r["loss"] for r in losses if r.get("event") == "step"]
        assert len(step_losses) == steps and all(math.isfinite(v) for v in step_losses), (
            f"{provider.__name__}: training losses {step_losses} are not all finite")
        loaded = load_model(tmp / "run", registry=registry)
        if provider.kind == "tokenizer":
            assert loaded.tokenizer.state() == trainer.tokenizer.state(), (
                f"{provider.__name__}: the checkpoint does not bring back the tokenizer it was trained with")
        elif issubclass(provider, EncoderProvider):
            assert loaded.profile.model.encoders == {provider.modality: provider.name}
            assert any(key.startswith(f"extras.encoders.{provider.modality}.") for key in loaded.state["model"])
        else:
            assert getattr(loaded.profile.model, provider.kind) == provider.name


def check_retriever(provider: type[Provider], options: Mapping[str, Any] | None = None) -> None:
    """Index three documents, reopen the index, search it, and augment a prompt with the passages."""
    from apt.providers import Document, Passage
    from apt.tokenizers import ByteTokenizer

    instance = _instance(provider, options)
    assert isinstance(instance, RetrieverProvider)
    retriever = instance.build()
    docs = [Document("the cat sat on the mat", "a.txt:1"), Document("dogs bark at night", "b.txt:1"),
            Document("a cat and a dog met", "c.txt:1")]
    with _scratch() as tmp:
        meta = retriever.build_index(docs, tmp / "docs.idx")
        assert isinstance(meta, dict), f"{provider.__name__}: build_index must return the index metadata as a dict"
        hits = retriever.open(tmp / "docs.idx").search("cat", 2)
        assert 1 <= len(hits) <= 2 and all(isinstance(h, Passage) for h in hits), hits
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True), "passages must come best first"
        assert hits[0].source in ("a.txt:1", "c.txt:1"), f"'cat' should find a cat document first, got {hits[0]}"
        prompt = retriever.augment("Where is the cat?", hits)
        assert "Where is the cat?" in prompt, "augment() must keep the prompt"
        tokenizer = ByteTokenizer()
        for budget in (len(tokenizer.encode("Where is the cat?")), len(tokenizer.encode(prompt)), 10_000):
            kept = retriever.fit("Where is the cat?", hits, tokenizer, budget)
            assert [p.source for p in kept] == [p.source for p in hits[: len(kept)]], "fit() must keep the best first"
            used = len(tokenizer.encode(retriever.augment("Where is the cat?", kept)))
            assert used <= budget, f"fit() kept passages that need {used} tokens of a {budget}-token budget"
        assert retriever.fit("Where is the cat?", hits, tokenizer, 10_000) == hits
        try:
            retriever.open(tmp / "missing.idx")
        except AptError:
            pass
        else:
            raise AssertionError(f"{provider.__name__}: opening a missing index must raise apt.AptError")


def check_voter(provider: type[Provider], options: Mapping[str, Any] | None = None) -> None:
    """Entropy and the vote/no-vote decision, and the pure data hook ``vote_hook`` (JSON in, JSON out)."""
    instance = _instance(provider, options)
    assert isinstance(instance, VoterProvider)
    voter = instance.build()
    assert abs(voter.entropy([0.25] * 4) - math.log(4)) < 1e-6, "entropy() of a uniform 4-way choice must be ln 4"
    assert voter.should_vote([0.25] * 4, 0.5) and not voter.should_vote([1.0, 0.0, 0.0, 0.0], 0.5)
    assert voter.samples >= 1 and voter.temperature > 0, "a voter draws at least one sample at a positive temperature"
    module, _, attr = instance.vote_hook.partition(":")
    hook: Callable[[Any], Any] = getattr(importlib.import_module(module), attr)
    request = voter.request(["42", "42", "7"], [-1.0, -1.2, -0.5])
    assert request["candidates"] == ["42", "42", "7"] and request["logprobs"] == [-1.0, -1.2, -0.5]
    result = hook(json.loads(json.dumps(request)))
    json.dumps(result)
    missing = {"winner", "normalised", "agreement", "votes", "counts", "tie_broken_by_logprob"} - set(result)
    assert not missing, f"{provider.__name__}.vote_hook result lacks {sorted(missing)}"
    assert result["winner"] == "42" and result["votes"] == 3, result


def check_quant(provider: type[Provider], options: Mapping[str, Any] | None = None) -> None:
    """``apply`` keeps the logits close; ``restore`` on a fresh model takes the rewritten state dict exactly."""
    import torch

    instance = _instance(provider, options)
    assert isinstance(instance, QuantProvider)
    model = tiny_model(seed=0)
    x = torch.randint(0, 13, (2, 16))
    with torch.no_grad():
        reference = model(x).logits.float()
        rewritten = instance.apply(copy.deepcopy(model)).eval()
        logits = rewritten(x).logits.float()
    assert logits.shape == reference.shape and torch.isfinite(logits).all()
    error = (logits - reference).abs().max() / reference.abs().max()
    assert error < 0.1, f"{provider.__name__}: apply() moves the logits by {error:.3f} of their range"
    fresh = instance.restore(tiny_model(seed=1), "cpu")
    buffer = io.BytesIO()
    torch.save(rewritten.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x).logits.float(), logits, atol=1e-6), (
            f"{provider.__name__}: restore() + load_state_dict does not reproduce the rewritten model")


def check_tokenizer(provider: type[Provider], options: Mapping[str, Any] | None = None) -> None:
    """Built from a corpus read lazily: ids lie in ``[0, vocab_size)``, text round-trips through
    encode/decode (Unicode included) wherever ``encodable`` keeps it, text it cannot encode raises
    :class:`AptError`, and the state is plain JSON that rebuilds the identical tokenizer."""
    instance = _instance(provider, options)
    assert isinstance(instance, TokenizerProvider)
    tokenizer = instance.build(chunk for chunk in (_CORPUS, UNICODE_TEXT * 20))
    name = provider.__name__
    size = tokenizer.vocab_size
    assert isinstance(size, int) and size > 0, f"{name}: vocab_size must be a positive int, got {size!r}"
    for text in (_CORPUS[:300], UNICODE_TEXT, UNSEEN_TEXT, ""):
        kept = tokenizer.encodable(text)
        assert isinstance(kept, str), f"{name}: encodable() must return text"
        ids = tokenizer.encode(kept)
        assert all(isinstance(i, int) and 0 <= i < size for i in ids), f"{name}: ids of {kept!r} outside the vocabulary"
        assert tokenizer.decode(ids) == kept, (f"{name}: decode(encode(text)) gives {tokenizer.decode(ids)!r} "
                                               f"for {kept!r}")
        if kept != text:
            try:
                tokenizer.encode(text)
            except AptError:
                continue
            raise AssertionError(f"{name}: encode() of text that encodable() changes must raise AptError")
    assert tokenizer.encodable(UNICODE_TEXT) == UNICODE_TEXT, (
        f"{name}: cannot encode the Unicode text it was trained on")
    state = tokenizer.state()
    assert state.get("kind") == provider.name, (f"{name}: state()['kind'] must be the provider name "
                                                f"{provider.name!r}, got {state.get('kind')!r}")
    restored = instance.from_state(json.loads(json.dumps(state)))
    assert restored.state() == state and restored.vocab_size == size, f"{name}: from_state(state()) is another tokenizer"
    for text in (_CORPUS[:300], UNICODE_TEXT, tokenizer.encodable(UNSEEN_TEXT)):
        assert restored.encode(text) == tokenizer.encode(text), f"{name}: the restored tokenizer encodes {text!r} differently"


def check_encoder(provider: type[EncoderProvider], sample: Path, options: Mapping[str, Any] | None = None,
                  dims: tuple[ModelDims, ...] = DIMS) -> None:
    """``load`` turns ``sample`` into a finite tensor and a file that is not media into an
    :class:`apt.AptError`; the module maps two stacked items to (2, ``tokens()``, ``d_out``), finite
    forward and backward, deterministic in eval, and its state survives ``torch.save``."""
    import torch

    instance = _instance(provider, options)
    assert isinstance(instance, EncoderProvider)
    item = instance.load(sample)
    assert isinstance(item, torch.Tensor) and item.is_floating_point() and torch.isfinite(item).all(), (
        f"{provider.__name__}.load({sample.name}) must return a finite float tensor")
    assert torch.equal(item, instance.load(sample)), f"{provider.__name__}.load is not deterministic"
    with _scratch() as tmp:
        junk = tmp / f"junk{sample.suffix}"
        junk.write_bytes(b"this is not a media file\n" * 4)
        try:
            instance.load(junk)
        except AptError:
            pass
        else:
            raise AssertionError(f"{provider.__name__}.load accepted a text file named {junk.name}; it must "
                                 f"raise apt.AptError naming why")
    batch = torch.stack([item, item.flip(-1)])  # (2, *item_shape)
    for d in dims:
        instance.check(d)
        torch.manual_seed(0)
        module = instance.build(d)
        torch.manual_seed(0)
        twin = instance.build(d)
        name = f"{provider.__name__} built for {d}"
        _assert_same_state(module, twin, f"{name}: two builds under one seed differ")
        assert isinstance(module, MediaEncoder), f"{name}: the module needs int attributes n_tokens and d_out"
        assert module.n_tokens == instance.tokens(), f"{name}: n_tokens {module.n_tokens} != tokens() {instance.tokens()}"
        out = module(batch)
        assert out.shape == (2, module.n_tokens, module.d_out), f"{name}: output {tuple(out.shape)}"
        assert torch.isfinite(out).all(), f"{name}: non-finite output"
        out.square().mean().backward()
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), f"{name}: gradients"
        module.eval()
        with torch.no_grad():
            assert torch.equal(module(batch), module(batch)), f"{name}: eval forward is not deterministic"
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        buffer.seek(0)
        twin.load_state_dict(torch.load(buffer, weights_only=True))
        _assert_same_state(module, twin, f"{name}: the state dict does not survive torch.save/weights_only load")


def check_fusion(provider: type[FusionProvider], options: Mapping[str, Any] | None = None,
                 dims: tuple[ModelDims, ...] = DIMS) -> None:
    """With random features for two media, ``inject`` and ``after_block`` keep (B, T, C), stay finite,
    leave a batch without media exactly alone, and give the features finite gradients."""
    import torch

    from apt.batch import Media

    instance = _instance(provider, options)
    assert isinstance(instance, FusionProvider)
    encoders = {"image": (4, 24), "audio": (3, 16)}
    for d in dims:
        instance.check(d)
        torch.manual_seed(0)
        module = instance.build(d, encoders)
        name = f"{provider.__name__} built for {d}"
        assert isinstance(module, Fusion), f"{name}: the module needs inject and after_block (apt.providers.Fusion)"
        slots = {m: instance.slots(m, n) for m, (n, _) in encoders.items()}
        B, T = 3, d.block_size
        assert sum(slots.values()) < T, f"{name}: slots {slots} leave no room for text in {T} positions"
        features = {m: torch.randn(2, n, width, requires_grad=True) for m, (n, width) in encoders.items()}
        media = Media({m: torch.zeros(2) for m in encoders}, {"image": torch.tensor([0, 1]), "audio": torch.tensor([0, 2])},
                      {"image": torch.tensor([0, 0]), "audio": torch.tensor([slots["image"], 0])}, features)
        x = torch.randn(B, T, d.d_model)
        out = module.inject(x, media)
        for layer in range(d.n_layer):
            out = module.after_block(layer, out, media)
        assert out.shape == x.shape and torch.isfinite(out).all(), f"{name}: output {tuple(out.shape)}, finite?"
        (out.square().mean() + sum(f.sum() * 0 for f in features.values())).backward()
        assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in features.values()), f"{name}: grads"
        text_only = Media({}, {}, {}, {})
        plain = module.inject(x, text_only)
        for layer in range(d.n_layer):
            plain = module.after_block(layer, plain, text_only)
        assert torch.equal(plain, x), f"{name}: a batch without media must pass through unchanged"


def _media_corpus(tmp: Path, modality: str, sample: Path) -> Path:
    """Eight records pairing copies of ``sample`` with short texts, and two without media."""
    import shutil

    lines = []
    for i in range(8):
        shutil.copy(sample, tmp / f"item{i}{sample.suffix}")
        lines.append(json.dumps({"text": f"item {i % 4}", modality: f"item{i}{sample.suffix}"}))
    lines += [json.dumps({"text": "no media here"})] * 2
    corpus = tmp / "media.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return corpus


def tiny_model(vocab_size: int = 13, seed: int = 0) -> LanguageModel:
    """A 2-layer sdpa + dense model in eval mode (block 16, d_model 32): what quantisers and self-tests run on."""
    import torch

    from apt.model import ModelBuilder
    from apt.profile import Profile

    profile = cfg.build(Profile, {"model": {"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 16,
                                            "attention": "sdpa", "ffn": "dense"}})
    torch.manual_seed(seed)
    return ModelBuilder(profile, vocab_size, registry=_registry(None)).build().model.eval()


# -- internals -----------------------------------------------------------------------------------


def _numeric(tp: Any) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return all(a in (int, float) for a in args)


def _instance(provider: type[Provider], options: Mapping[str, Any] | None) -> Provider:
    config: Any = cfg.build(provider.Config, dict(options or {}), f"providers.{provider.kind}.{provider.name}")
    return provider(config)


def _build(instance: Provider, dims: ModelDims) -> nn.Module:
    from apt.builtin.layers import DenseFFN

    if isinstance(instance, RouterProvider):
        return instance.build(dims, 0, lambda: DenseFFN(dims, 4 * dims.d_model))
    if isinstance(instance, AlignProvider):
        return instance.build(dims)
    assert isinstance(instance, (AttentionProvider, FFNProvider)), f"{instance.kind} providers build no module"
    return instance.build(dims, 0)


def _assert_same_state(a: nn.Module, b: nn.Module, message: str) -> None:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"{message}: keys {sorted(set(sa) ^ set(sb))}"
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{message}: {key}"


def _check_block_module(module: nn.Module, d: ModelDims, name: str, *, causal: bool = True) -> None:
    """(B, T, C) -> (B, T, C) for full and short sequences, finite both ways, deterministic in eval, causal."""
    import torch

    gen = torch.Generator().manual_seed(0)
    for T in (d.block_size, d.block_size // 2 + 1):
        x = torch.randn(2, T, d.d_model, generator=gen, requires_grad=True)
        module.train()
        y = module(x)
        assert isinstance(y, torch.Tensor) and y.shape == x.shape, (
            f"{name}: forward of {tuple(x.shape)} returned {getattr(y, 'shape', type(y))}; expected the same shape")
        assert torch.isfinite(y).all(), f"{name}: forward output is not finite"
        y.square().mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all(), f"{name}: input gradient is missing or not finite"
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads), f"{name}: a parameter gradient is not finite"
        params = [p for p in module.parameters() if p.requires_grad]
        assert not params or any(g.abs().sum() > 0 for g in grads), f"{name}: no parameter receives a gradient"
        module.zero_grad(set_to_none=True)
    module.eval()
    with torch.no_grad():
        x = torch.randn(2, d.block_size, d.d_model, generator=gen)
        y = module(x)
        assert torch.equal(y, module(x)), f"{name}: two eval forwards of one input differ"
        if causal:
            for t in sorted({0, d.block_size // 2, d.block_size - 2}):
                changed = x.clone()
                changed[:, t + 1:] = torch.randn(changed[:, t + 1:].shape, generator=gen)
                assert torch.allclose(module(changed)[:, : t + 1], y[:, : t + 1], atol=1e-5), (
                    f"{name}: changing tokens after position {t} changes the output at or before it (looks ahead)")
        if isinstance(module, HasInferenceForm):
            form = module.inference_form().eval()
            assert torch.allclose(form(x), y, atol=1e-5), f"{name}: inference_form() does not match forward"
            if isinstance(form, SupportsKVCache):
                check_kv_cache(form, d, f"{name}, inference form")
        if isinstance(module, SupportsKVCache):
            check_kv_cache(module, d, name)
    module.train()


def check_kv_cache(module: nn.Module, d: ModelDims, name: str = "module") -> None:
    """A :class:`apt.SupportsKVCache` module's cached outputs equal its full forward (eval, within 1e-5): a
    prefill then one token per step, rows of different lengths (right-padded prefill, masked steps),
    a call feeding only some rows, and a row restarted shorter over stale keys."""
    import torch

    from apt.kvcache import KVCache

    assert isinstance(module, SupportsKVCache)
    gen = torch.Generator().manual_seed(2)
    was_training = module.training
    module.eval()
    T = d.block_size
    x = torch.randn(2, T, d.d_model, generator=gen)  # (B, T, C)
    with torch.no_grad():
        full = module(x)

        def same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
            assert got.shape == want.shape, f"{name}: forward_cached {what} returned shape {tuple(got.shape)}"
            error = (got - want).abs().max().item()
            assert error <= 1e-5, f"{name}: forward_cached {what} differs from forward by {error:.2e}"

        cache = KVCache(1, 2, T)
        first = min(3, T - 1)
        cache.prepare(None, [0, 0], first, x.device)
        same(module.forward_cached(x[:, :first], cache.layers[0]), full[:, :first], f"prefilling {first} tokens")
        for t in range(first, T):
            cache.prepare(None, [t, t], 1, x.device)
            same(module.forward_cached(x[:, t:t + 1], cache.layers[0]), full[:, t:t + 1], f"at position {t}")

        short, long = 1, min(4, T - 2)
        ragged = x[:, :long].clone()
        ragged[0, short:] = torch.randn(long - short, d.d_model, generator=gen)
        cache = KVCache(1, 2, T)
        cache.prepare(None, [0, 0], long, x.device)
        out = module.forward_cached(ragged, cache.layers[0])
        same(out[0, :short], module(x[:1, :short])[0], "of the shorter row of a right-padded prefill")
        same(out[1], full[1, :long], "of the longer row of a right-padded prefill")
        cache.prepare(None, [short, long], 1, x.device)
        out = module.forward_cached(torch.stack([x[0, short:short + 1], x[1, long:long + 1]]), cache.layers[0])
        same(out[0], module(x[:1, :short + 1])[0, -1:], "of a row one token long among longer ones")
        same(out[1], full[1, long:long + 1], "of a row at its own position")
        cache.prepare([1], [long + 1], 1, x.device)
        same(module.forward_cached(x[1:, long + 1:long + 2], cache.layers[0]), full[1:, long + 1:long + 2],
             "feeding one row of two")
        cache.prepare([1], [0], 2, x.device)
        same(module.forward_cached(x[:1, :2], cache.layers[0]), full[:1, :2],
             "of a row restarted over its stale keys")
    module.train(was_training)


def _check_aligner(module: nn.Module, d: ModelDims, name: str) -> None:
    import torch
    from torch import nn

    if not isinstance(module, EvidenceAligner):
        return
    evidence = torch.randn(2, d.d_model)
    module.provide_evidence(evidence)
    assert module.take_evidence() is evidence, f"{name}: take_evidence() must return what provide_evidence() got"
    assert module.take_evidence() is None, f"{name}: evidence must be taken once"
    head = nn.Linear(d.d_model, d.vocab_size, bias=False)
    state = module.evidence_view(torch.randn(2, 5, d.d_model), evidence, head)
    assert tuple(state.hidden.shape) == (2, 5, d.d_model), f"{name}: evidence_view hidden has shape {state.hidden.shape}"
    assert tuple(state.logits.shape) == (2, 5, d.vocab_size), f"{name}: evidence_view logits has shape {state.logits.shape}"


def _registry(provider: type[Provider] | None) -> Registry:
    """A registry of the core's built-ins plus ``provider`` (importable, not necessarily installed)."""
    entries = dict(_BUILTINS)
    if provider is not None:
        entries[f"{provider.kind}.{provider.name}"] = f"{provider.__module__}:{provider.__qualname__}"
    return Registry([EntryPoint(name, value, GROUP) for name, value in entries.items()])


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A temporary directory that is also APT_HOME, restored afterwards."""
    saved = os.environ.get("APT_HOME")
    with tempfile.TemporaryDirectory(prefix="apt-contract-") as tmp:
        os.environ["APT_HOME"] = str(Path(tmp) / "home")
        try:
            yield Path(tmp)
        finally:
            if saved is None:
                os.environ.pop("APT_HOME", None)
            else:
                os.environ["APT_HOME"] = saved
