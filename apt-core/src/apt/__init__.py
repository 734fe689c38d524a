"""APT: train and serve transformer language models assembled from plugin providers.

This module is the public surface: everything a plugin may use is importable from ``apt``
(``from apt import AttentionProvider, ModelDims, option``); the submodules behind it are the
kernel's own business and may move. Test helpers live in :mod:`apt.testing`.

Importing ``apt`` is cheap on purpose (no torch): names resolve lazily on first access, so
a provider module that imports ``option`` and ``FFNProvider`` stays torch-free and
``apt plugin list`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "2.0.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # the provider contract
    "KINDS": "apt.providers",
    "MODEL_KINDS": "apt.providers",
    "ModelDims": "apt.providers",
    "EmptyConfig": "apt.providers",
    "Provider": "apt.providers",
    "AttentionProvider": "apt.providers",
    "FFNProvider": "apt.providers",
    "RouterProvider": "apt.providers",
    "AlignProvider": "apt.providers",
    "EncoderProvider": "apt.providers",
    "FusionProvider": "apt.providers",
    "MediaEncoder": "apt.providers",
    "Fusion": "apt.providers",
    "MODALITIES": "apt.providers",
    "RetrieverProvider": "apt.providers",
    "VoterProvider": "apt.providers",
    "QuantProvider": "apt.providers",
    "TokenizerProvider": "apt.providers",
    "Tokenizer": "apt.providers",
    "Document": "apt.providers",
    "Passage": "apt.providers",
    "Retriever": "apt.providers",
    "TextEncoder": "apt.providers",
    "SearchIndex": "apt.providers",
    "Voter": "apt.providers",
    "check_provider_class": "apt.providers",
    # capabilities
    "Switchable": "apt.providers",
    "ResidualOutput": "apt.providers",
    "SelfInitialised": "apt.providers",
    "HasInferenceForm": "apt.providers",
    "SupportsKVCache": "apt.providers",
    "EvidenceAligner": "apt.providers",
    # configuration
    "option": "apt.config",
    "require": "apt.config",
    "read_profile": "apt.profile",
    "assign": "apt.profile",
    "find_profile": "apt.profile",
    "parse_assignments": "apt.config",
    # hooks
    "hookimpl": "apt.hookspecs",
    "TrainerView": "apt.hookspecs",
    "Batch": "apt.batch",
    "Media": "apt.batch",
    "ExtraLosses": "apt.hookspecs",
    "Schedule": "apt.schedules",
    # errors a plugin raises or catches
    "AptError": "apt.errors",
    "ConfigError": "apt.errors",
    "ProviderError": "apt.errors",
    "CheckpointError": "apt.errors",
    "RunError": "apt.errors",
    "ErrorStore": "apt.errorstore",
    # the registry and the CLI, for plugins that add commands (apt.commands entry points)
    "Registry": "apt.registry",
    "default_registry": "apt.registry",
    "ArgumentParser": "apt.cli",
    "apt_home": "apt.home",
    # files
    "atomic_write": "apt.atomic",
    "fsync_dir": "apt.atomic",
    "read_chunks": "apt.data",
    # models and checkpoints (these import torch)
    "LanguageModel": "apt.model",
    "Output": "apt.model",
    "CausalSelfAttention": "apt.builtin.layers",
    "EncoderBlock": "apt.builtin.encoder_layers",
    "Loaded": "apt.checkpoint",
    "load_model": "apt.checkpoint",
    "rebuild": "apt.checkpoint",
    "save_file": "apt.checkpoint",
    "checkpoint_dir": "apt.checkpoint",
    "MODEL_FILE": "apt.checkpoint",
    "KVCache": "apt.kvcache",
    "LayerCache": "apt.kvcache",
    "CachedKV": "apt.kvcache",
    "Completion": "apt.generate",
    "sample": "apt.generate",
    "sample_many": "apt.generate",
    "evaluate_tokens": "apt.generate",
    # benchmarks: interleaved A/B timing
    "interleave": "apt.timing",
    "paired_ratio": "apt.timing",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'apt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from apt.atomic import atomic_write, fsync_dir
    from apt.batch import Batch, Media
    from apt.builtin.encoder_layers import EncoderBlock
    from apt.builtin.layers import CausalSelfAttention
    from apt.checkpoint import MODEL_FILE, Loaded, checkpoint_dir, load_model, rebuild, save_file
    from apt.cli import ArgumentParser
    from apt.config import option, parse_assignments, require
    from apt.data import read_chunks
    from apt.errors import AptError, CheckpointError, ConfigError, ProviderError, RunError
    from apt.errorstore import ErrorStore
    from apt.generate import Completion, evaluate_tokens, sample, sample_many
    from apt.home import apt_home
    from apt.hookspecs import ExtraLosses, TrainerView, hookimpl
    from apt.kvcache import CachedKV, KVCache, LayerCache
    from apt.model import LanguageModel, Output
    from apt.profile import assign, find_profile, read_profile
    from apt.providers import (
        KINDS,
        MODALITIES,
        MODEL_KINDS,
        AlignProvider,
        AttentionProvider,
        Document,
        EmptyConfig,
        EncoderProvider,
        EvidenceAligner,
        FFNProvider,
        Fusion,
        FusionProvider,
        HasInferenceForm,
        MediaEncoder,
        ModelDims,
        Passage,
        Provider,
        QuantProvider,
        ResidualOutput,
        Retriever,
        RetrieverProvider,
        SearchIndex,
        SelfInitialised,
        SupportsKVCache,
        Switchable,
        TextEncoder,
        Tokenizer,
        TokenizerProvider,
        Voter,
        VoterProvider,
        check_provider_class,
    )
    from apt.registry import Registry, default_registry
    from apt.schedules import Schedule
    from apt.timing import interleave, paired_ratio
