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

Sharded checkpoints (``train.parallel: fsdp`` on several ranks) are directories,
``step-NNNNNNNN.dcp/``: each rank writes its own shards through ``torch.distributed.checkpoint``
into a temporary directory, then rank 0 writes ``apt.pt`` (everything but the tensors, plus the
sha256 of every shard file) and renames the directory into place. DCP reshards on load, so such a
checkpoint resumes on any number of ranks, one included, and ``apt generate`` reads it directly.

Integrity: every checkpoint written since format version 2 carries ``state["sha256"]``, a digest
of everything else in it (see :func:`payload_digest`), checked on every load; a mismatch is a
:class:`CheckpointError` naming the file, never a silent load of damaged weights. Version 1 files
(apt-core before checksums) have none: they still load, with a warning that they are unverified,
and the next save of a resumed run writes a verified one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from apt import __version__
from apt import config as cfg
from apt.atomic import DiskFullError, atomic_write, free_bytes, fsync_dir, out_of_space
from apt.errors import AptError, CheckpointError, ConfigError
from apt.model import LanguageModel, ModelBuilder
from apt.profile import Profile
from apt.providers import MODEL_KINDS, QuantProvider
from apt.registry import PACKAGES, Registry, default_registry
from apt.tokenizers import Tokenizer, tokenizer_from_state

FORMAT = "apt-checkpoint"
FORMAT_VERSION = 2
#: The key of the payload digest; every other key is covered by it.
DIGEST_KEY = "sha256"
BEST_FILE = "best.pt"
#: A sharded checkpoint: a directory of DCP shard files with its :data:`META_FILE`.
SHARDED_SUFFIX = ".dcp"
BEST_SHARDED = "best" + SHARDED_SUFFIX
META_FILE = "apt.pt"
_STEP_FILE = re.compile(r"^step-(\d+)\.(?:pt|dcp)$")
log = logging.getLogger("apt")
#: The file a model directory (the output of ``apt quantize``) holds.
MODEL_FILE = "model.pt"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Completed step checkpoints of a run (files and sharded directories), oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def best_checkpoints(run_dir: Path) -> list[Path]:
    """The run's ``best.pt`` and ``best.dcp`` that exist."""
    folder = checkpoint_dir(run_dir)
    return [p for p in (folder / BEST_FILE, folder / BEST_SHARDED) if p.exists()]


def remove(path: Path) -> None:
    """Delete a checkpoint, file or sharded directory (a link is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _prune(run_dir: Path, keep_last: int) -> None:
    """Drop step checkpoints beyond the newest ``keep_last`` and temporaries a killed save left."""
    folder = checkpoint_dir(run_dir)
    for _, old in step_checkpoints(run_dir)[:-keep_last]:
        remove(old)
    for stale in folder.glob(".*.tmp*"):
        remove(stale)


def save(run_dir: Path, state: dict[str, Any], *, keep_last: int, best: bool = False) -> Path:
    """Write the checkpoint for ``state["step"]``, prune to ``keep_last``; also best.pt if ``best``.

    Older checkpoints are pruned only once the new one is on disk, so a failed save (disk full)
    leaves the previous ones as they were.
    """
    state = _stamped(state)
    folder = checkpoint_dir(run_dir)
    path = folder / f"step-{state['step']:08d}.pt"
    advice = (f"the previous checkpoint is intact: free space on that disk or set checkpoint.dir to one "
              f"with more room (moving {run_dir} there), then continue with --resume auto")
    try:
        atomic_write(path, lambda f: torch.save(state, f))
        if best:
            atomic_write(folder / BEST_FILE, lambda f: torch.save(state, f))
            remove(folder / BEST_SHARDED)  # a run that changed format keeps one best
    except DiskFullError as err:
        raise err.advise(advice) from err
    _prune(run_dir, keep_last)
    return path


def save_sharded(run_dir: Path, state: dict[str, Any], tensors: dict[str, Any], *, keep_last: int,
                 best: bool = False, main: bool) -> Path:
    """Write a sharded checkpoint for ``state["step"]``; a collective: every rank calls it.

    ``tensors`` is this rank's part ({"model": ..., "optimizer": ...} from
    ``torch.distributed.checkpoint.state_dict.get_state_dict``); ``state`` is the rest, used on rank
    0 (``main``), which writes the manifest, renames the directory into place, keeps ``best.dcp``
    (hard links: shard files are never rewritten in place) and prunes. Returns on every rank only
    once the checkpoint is complete.
    """
    import torch.distributed as tdist
    import torch.distributed.checkpoint as dcp

    folder = checkpoint_dir(run_dir)
    final = folder / f"step-{state['step']:08d}{SHARDED_SUFFIX}"
    tmp = folder / f".{final.name}.tmp"
    distributed = tdist.is_available() and tdist.is_initialized()
    if main:
        remove(tmp)
        tmp.mkdir(parents=True)
    if distributed:
        tdist.barrier()
    try:
        with _single_process_is_intended():
            dcp.save(tensors, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True))
        if main:
            shards = {f.name: _file_digest(f) for f in sorted(tmp.iterdir()) if f.is_file()}
            stamped = _stamped({**state, "shards": shards})
            atomic_write(tmp / META_FILE, lambda f: torch.save(stamped, f))
            _replace_dir(tmp, final)
            if best:
                _link_copy(final, folder / BEST_SHARDED)
                remove(folder / BEST_FILE)
            _prune(run_dir, keep_last)
    except (OSError, RuntimeError) as err:
        if main:
            remove(tmp)
        if out_of_space(err):
            raise DiskFullError(final, free_bytes(folder)).advise(
                "the previous checkpoint is intact: free space on that disk or set checkpoint.dir to one with "
                "more room, then continue with --resume auto") from err
        raise
    finally:
        if distributed:
            tdist.barrier()
    return final


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename the finished directory ``src`` to ``dst``; an existing ``dst`` (the same step saved
    again) goes aside first and only then away, so some complete checkpoint exists at every instant."""
    aside = dst.with_name(f".{dst.name}.old.tmp")
    remove(aside)
    if dst.exists():
        os.replace(dst, aside)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    remove(aside)


def _link_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of the directory ``src`` (hard links where the filesystem allows)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    remove(tmp)
    tmp.mkdir()
    for f in src.iterdir():
        try:
            os.link(f, tmp / f.name)
        except OSError:
            shutil.copy2(f, tmp / f.name)
    _replace_dir(tmp, dst)


def load_shards(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load the sharded checkpoint ``path`` into ``model`` (and ``optimizer``): plain, DDP-wrapped
    or FSDP-sharded, on any number of ranks (DCP reads each rank's part of the saved shards).

    Call :func:`load` first: it verifies the shard files this reads.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    try:
        with _single_process_is_intended():
            if optimizer is None:
                model_sd = get_model_state_dict(model)
                dcp.load({"model": model_sd}, storage_reader=dcp.FileSystemReader(path))
                set_model_state_dict(model, model_sd)
            else:
                model_sd, optim_sd = get_state_dict(model, optimizer)
                dcp.load({"model": model_sd, "optimizer": optim_sd}, storage_reader=dcp.FileSystemReader(path))
                set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    except (CheckpointException, RuntimeError, KeyError, ValueError) as err:
        # DCP wraps each rank's traceback; its last line is the reason
        last = ([line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__])[-1]
        raise CheckpointError(f"sharded checkpoint {path} does not match its model: {last[:300]}") from None


@contextlib.contextmanager
def _single_process_is_intended() -> Iterator[None]:
    """DCP warns whenever it runs without a process group; for ``apt generate`` that is the point."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is disabled, unavailable or uninitialized",
                                category=UserWarning)
        yield


def save_file(path: Path, state: dict[str, Any]) -> Path:
    """Write one self-contained checkpoint file (a model directory's ``model.pt``) atomically."""
    state = _stamped(state)
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except DiskFullError as err:
        raise err.advise("free space on that disk or write to another directory") from err
    return path


def _stamped(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with the format marker and its digest, ready for ``torch.save``."""
    out = {"format": FORMAT, "format_version": FORMAT_VERSION, "apt_version": __version__,
           **{k: v for k, v in state.items() if k != DIGEST_KEY}}
    out[DIGEST_KEY] = payload_digest(out)
    return out


def payload_digest(state: Mapping[str, Any]) -> str:
    """sha256 of every value in ``state`` but the digest, in an encoding fixed by this function.

    Hashing the values rather than the file bytes keeps the digest inside the one file (a single
    atomic write, still a plain ``torch.load(weights_only=True)``) and independent of how torch
    lays out the zip: damage anywhere that changes what loads (a tensor's bytes, the pickled
    structure, a number) changes the digest.
    """
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        _feed_tensor(digest, value.detach())
    elif isinstance(value, Mapping):
        digest.update(b"D%d:" % len(value))
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(b"%s%d:" % (b"L" if isinstance(value, list) else b"U", len(value)))
        for item in value:
            _feed(digest, item)
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        digest.update(b"S%d:" % len(data) + data)
    elif isinstance(value, (bytes, bytearray)):
        digest.update(b"B%d:" % len(value) + bytes(value))
    elif isinstance(value, bool) or value is None:
        digest.update(b"K" + repr(value).encode())
    elif isinstance(value, int):
        digest.update(b"I%d;" % value)
    elif isinstance(value, float):
        digest.update(b"F" + value.hex().encode() + b";")
    else:  # torch.dtype, torch.device and the like: their repr names them fully
        text = f"{type(value).__module__}.{type(value).__qualname__}:{value!r}".encode()
        digest.update(b"O%d:" % len(text) + text)


def _feed_tensor(digest: Any, tensor: torch.Tensor) -> None:
    if tensor.is_quantized:
        scheme = tensor.qscheme()
        digest.update(b"Q" + str(scheme).encode())
        if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            _feed(digest, (tensor.q_scale(), tensor.q_zero_point()))
        else:
            _feed(digest, (tensor.q_per_channel_scales(), tensor.q_per_channel_zero_points(),
                           tensor.q_per_channel_axis()))
        tensor = tensor.int_repr()
    if tensor.layout != torch.strided:
        digest.update(b"Y" + str(tensor.layout).encode())
        tensor = tensor.to_dense()
    digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
    if tensor.device.type != "meta" and tensor.numel():
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def resolve(path: str | Path) -> Path:
    """A checkpoint file or sharded directory, a model directory (its model.pt), or a run directory
    (its best checkpoint, else its latest step)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / MODEL_FILE).is_file():
            return p / MODEL_FILE
        if (p / META_FILE).is_file():
            return p
        for run_dir in (p, p.parent):
            best = best_checkpoints(run_dir)
            if best:
                return best[0]
            steps = step_checkpoints(run_dir)
            if steps:
                return steps[-1][1]
        raise CheckpointError(f"no checkpoint in {p}: expected {checkpoint_dir(p)}/step-*.pt, step-*.dcp or best.pt "
                              f"(train first with apt train) or {p / MODEL_FILE} (from apt quantize)")
    raise CheckpointError(f"checkpoint {str(p)!r} not found: pass a run directory, a .pt file "
                          f"or a model directory written by apt quantize")


class _Unusable(Exception):
    """Why a file cannot serve as a checkpoint, without the advice (which depends on who asked)."""


def load(path: Path) -> dict[str, Any]:
    """The verified state in ``path``; any damage is a :class:`CheckpointError` naming the file."""
    try:
        state, verified = _read(path)
    except _Unusable as err:
        raise CheckpointError(f"checkpoint {path} {err}; delete it or point at another checkpoint") from None
    if not verified:
        _warn_unverified(path)
    return state


def _warn_unverified(path: Path) -> None:
    log.warning("checkpoint %s predates checksums (format version 1) and is loaded unverified; "
                "a run resumed from it writes verified checkpoints", path)


def _read(path: Path) -> tuple[dict[str, Any], bool]:
    """The state in ``path`` and whether its digest was checked (False only for version 1 files).

    For a sharded directory: its manifest, checked, and every shard file against the manifest.
    """
    if path.is_dir():
        state, _ = _read_file(path / META_FILE)
        shards = state.get("shards")
        if not isinstance(shards, dict) or not shards:
            raise _Unusable(f"is damaged: its {META_FILE} lists no shard files")
        for name, digest in shards.items():
            shard = path / str(name)
            if "/" in str(name) or not shard.is_file():
                raise _Unusable(f"is incomplete: shard file {name} is missing")
            if _file_digest(shard) != digest:
                raise _Unusable(f"is damaged: shard file {name} does not match its sha256 checksum")
        return state, True
    return _read_file(path)


def _read_file(path: Path) -> tuple[dict[str, Any], bool]:
    if not path.is_file():
        raise _Unusable(f"is not an apt checkpoint (no {path.name})")
    try:
        with warnings.catch_warnings():  # torch's deprecation notes on every quantised (int8) tensor it unpickles
            warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                    category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged pickle fails in any way (IndexError, KeyError, ...): all mean corrupt
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _Unusable(f"is corrupt or not an apt checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _Unusable(f"is not an apt checkpoint (no '{FORMAT}' marker)")
    version = state.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise _Unusable(f"was written by a newer apt ({state.get('apt_version')}): upgrade apt-core to read it")
    if version < 2 and DIGEST_KEY not in state:
        return state, False
    stored = state.get(DIGEST_KEY)
    if not isinstance(stored, str):
        raise _Unusable(f"is damaged: format version {version} requires a '{DIGEST_KEY}' checksum and it is missing")
    actual = payload_digest(state)
    if actual != stored:
        raise _Unusable(f"is damaged: its contents do not match their sha256 checksum "
                        f"(stored {stored[:12]}…, computed {actual[:12]}…)")
    return state, True


@dataclass
class Latest:
    """The newest checkpoint of a run that verifies, and the newer ones passed over with the reason."""

    path: Path | None = None
    state: dict[str, Any] | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def latest(run_dir: Path) -> Latest:
    """The newest usable checkpoint among ``step-*.pt`` and ``best.pt``, falling back past damaged ones.

    ``best.pt`` counts: when the step files are gone or damaged it is often the newest good state.
    At equal steps the step file wins (it is the same state). Nothing to resume from at all gives
    an empty result; files that exist but none verifies is a :class:`CheckpointError`, since
    starting over would silently discard the run.
    """
    found = Latest()
    candidates = list(step_checkpoints(run_dir))
    for best in best_checkpoints(run_dir):
        try:
            best_state, _ = _read(best)
            candidates.append((int(best_state["step"]), best))
            del best_state
        except (_Unusable, KeyError, TypeError, ValueError) as err:
            found.skipped.append((best, str(err) if isinstance(err, _Unusable) else "is damaged: it holds no step"))
    candidates.sort(key=lambda c: (c[0], not c[1].name.startswith("best")), reverse=True)
    for _, path in candidates:
        try:
            state, verified = _read(path)
        except _Unusable as err:
            found.skipped.append((path, str(err)))
            continue
        if not verified:
            _warn_unverified(path)
        found.path, found.state = path, state
        return found
    if found.skipped:
        shown = "; ".join(f"{path.name} {reason}" for path, reason in found.skipped)
        raise CheckpointError(f"no checkpoint in {checkpoint_dir(run_dir)} can be resumed: {shown}; "
                              f"restore one from a backup or start over with --overwrite")
    return found


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
    model: LanguageModel
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
    if file.is_dir():
        load_shards(file, model)
    else:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint {file} does not match its model: {str(err).splitlines()[0]}") from None
    model.to(device).eval()
    return Loaded(model, tokenizer, profile, state, file)


def rebuild(state: dict[str, Any], file: Path, *, registry: Registry | None = None,
            device: str = "cpu") -> tuple[LanguageModel, Tokenizer, Profile]:
    """The freshly initialised model ``state`` describes (profile, tokenizer, providers, quant recipe).

    ``file`` only names the source in errors; the weights are left for the caller to load.
    """
    pinned = {kind: info["name"] for kind, info in state.get("providers", {}).items() if kind in MODEL_KINDS}
    profile = profile_of(state, file, pinned)
    tokenizer = tokenizer_from_state(state["tokenizer"], registry=registry)
    try:
        built = ModelBuilder(profile, tokenizer.vocab_size, registry=registry, strict=True).build()
    except AptError as err:
        raise CheckpointError(f"cannot rebuild the model of {file}: {err}") from None
    model = built.model
    if state.get("quant") is not None:
        model = _quantized(model, state["quant"], file, registry or default_registry(), device)
    return model, tokenizer, profile


def _quantized(model: LanguageModel, recipe: Any, file: Path, registry: Registry, device: str) -> LanguageModel:
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
