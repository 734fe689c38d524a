"""Checkpoints: atomic on disk, loadable with ``weights_only=True``, self-describing.

A checkpoint holds everything needed to continue a run bit-for-bit (model, optimizer, scaler,
RNG states, step, early-stopping state, plugin state) and to rebuild the model elsewhere
(the validated profile, tokenizer and provider versions). Files are written to a temporary
name in the same directory, fsynced, renamed into place, and the directory fsynced, so a
kill at any instant leaves either the old set of checkpoints or the new one.

A quantised model (``apt quantize``, from apt-plugin-quant) is a single checkpoint file,
``DIR/model.pt``, holding the quantised state dict and its recipe ``state["quant"] = {"method",
"options", "plugin_version"}``. :func:`load_model` rebuilds the float model, applies the named
``quant`` provider and loads the state into the result, so every command that takes
``--checkpoint`` runs a quantised model with no extra flag.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from apt import __version__
from apt import config as cfg
from apt.atomic import atomic_write
from apt.errors import AptError, CheckpointError, ConfigError
from apt.profile import Profile
from apt.providers import MODEL_KINDS, QuantProvider
from apt.registry import PACKAGES, Registry, default_registry
from apt.tokenizers import Tokenizer, tokenizer_from_state

FORMAT = "apt-checkpoint"
FORMAT_VERSION = 1
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
#: The file a model directory (the output of ``apt quantize``) holds.
MODEL_FILE = "model.pt"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Completed step checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def save(run_dir: Path, state: dict[str, Any], *, keep_last: int, best: bool = False) -> Path:
    """Write the checkpoint for ``state["step"]``, prune to ``keep_last``; also best.pt if ``best``."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "apt_version": __version__, **state}
    folder = checkpoint_dir(run_dir)
    path = folder / f"step-{state['step']:08d}.pt"
    atomic_write(path, lambda f: torch.save(state, f))
    if best:
        atomic_write(folder / "best.pt", lambda f: torch.save(state, f))
    for _, old in step_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    for stale in folder.glob(".*.tmp*"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    return path


def save_file(path: Path, state: dict[str, Any]) -> Path:
    """Write one self-contained checkpoint file (a model directory's ``model.pt``) atomically."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "apt_version": __version__, **state}
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def resolve(path: str | Path) -> Path:
    """A checkpoint file, a model directory (its model.pt), or a run directory (its best.pt, else its latest step)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / MODEL_FILE).is_file():
            return p / MODEL_FILE
        for run_dir in (p, p.parent):
            best = checkpoint_dir(run_dir) / "best.pt"
            if best.is_file():
                return best
            steps = step_checkpoints(run_dir)
            if steps:
                return steps[-1][1]
        raise CheckpointError(f"no checkpoint in {p}: expected {checkpoint_dir(p)}/step-*.pt or best.pt "
                              f"(train first with apt train) or {p / MODEL_FILE} (from apt quantize)")
    raise CheckpointError(f"checkpoint {str(p)!r} not found: pass a run directory, a .pt file "
                          f"or a model directory written by apt quantize")


def load(path: Path) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():  # torch's deprecation notes on every quantised (int8) tensor it unpickles
            warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                    category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not an apt checkpoint ({first}); "
                              f"delete it or point at another one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an apt checkpoint (no '{FORMAT}' marker)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer apt ({state.get('apt_version')}); "
                              f"upgrade apt-core to read it")
    return state


def profile_of(state: dict[str, Any], path: Path, models: dict[str, str] | None = None) -> Profile:
    """The checkpoint's profile; ``models`` pins ``model.<kind>`` to the providers it was trained with."""
    try:
        data = dict(state["profile"])
        data["model"] = {**data["model"], **(models or {})}
        return cfg.build(Profile, data)
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} holds an invalid profile: {err}") from None


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: Tokenizer
    profile: Profile
    state: dict[str, Any]
    path: Path


def load_model(path: str | Path, *, registry: Registry | None = None, device: str = "cpu") -> Loaded:
    """Rebuild the model a checkpoint was trained with, with the providers it names (no fallback).

    A quantised checkpoint (``state["quant"]``) comes back quantised the same way.
    """
    file = resolve(path)
    state = load(file)
    model, tokenizer, profile = rebuild(state, file, registry=registry, device=device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {file} does not match its model: {str(err).splitlines()[0]}") from None
    model.to(device).eval()
    return Loaded(model, tokenizer, profile, state, file)


def rebuild(state: dict[str, Any], file: Path, *, registry: Registry | None = None,
            device: str = "cpu") -> tuple[torch.nn.Module, Tokenizer, Profile]:
    """The freshly initialised model ``state`` describes (profile, tokenizer, providers, quant recipe).

    ``file`` only names the source in errors; the weights are left for the caller to load.
    """
    from apt.model import ModelBuilder

    pinned = {kind: info["name"] for kind, info in state.get("providers", {}).items() if kind in MODEL_KINDS}
    profile = profile_of(state, file, pinned)
    tokenizer = tokenizer_from_state(state["tokenizer"])
    try:
        built = ModelBuilder(profile, tokenizer.vocab_size, registry=registry, strict=True).build()
    except AptError as err:
        raise CheckpointError(f"cannot rebuild the model of {file}: {err}") from None
    model = built.model
    if state.get("quant") is not None:
        model = _quantized(model, state["quant"], file, registry or default_registry(), device)
    return model, tokenizer, profile


def _quantized(model: torch.nn.Module, recipe: Any, file: Path, registry: Registry, device: str) -> torch.nn.Module:
    """``model`` rewritten by the quant provider a quantised checkpoint names, ready for its state dict."""
    if not isinstance(recipe, dict) or not isinstance(recipe.get("method"), str):
        raise CheckpointError(f"checkpoint {file} holds an invalid quantisation recipe (expected "
                              f"{{'method': NAME, 'options': {{...}}}}); quantise the model again")
    method = recipe["method"]
    if registry.info("quant", method) is None:
        package = PACKAGES.get(f"quant.{method}", "the plugin that provides it")
        raise CheckpointError(f"checkpoint {file} is quantised with quant.{method}: pip install {package}")
    try:
        provider = registry.make("quant", method, recipe.get("options") or {})
        assert isinstance(provider, QuantProvider)
    except AptError as err:
        raise CheckpointError(f"checkpoint {file} is quantised with quant.{method}, which cannot load it: "
                              f"{err}") from None
    try:
        return provider.restore(model, device)
    except AptError as err:
        raise CheckpointError(f"cannot rebuild the quantised model of {file}: {err}") from None
