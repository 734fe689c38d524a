"""Multimodal corpora: JSONL records with a ``text`` and media files, turned into batches.

A record ``{"text": "a handwritten 7", "image": "images/0007.png"}`` becomes one row:
the fusion's slots for each medium it has (placeholder ids that the fusion overwrites with
features), then the tokens of ``"\\n" + text + "\\n"``: the newline before plays the part the
document separator plays in a text corpus (and is what ``apt generate`` prompts with), the one
after ends the answer. Loss covers the text only: targets at slots, at the leading newline and
at padding are -100.

Media are decoded once, when the corpus loads, by the encoder providers' ``load``: every bad
record is found before the first step (one line naming the JSONL line and the file, or a count
with ``data.skip_bad``), and batches are a pure function of (seed, step, micro-batch, rank)
like text batches, so resume stays exact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from apt.batch import Batch, Media
from apt.data import corpus_paths, global_picks
from apt.errors import AptError, ConfigError
from apt.model import LanguageModel
from apt.profile import DataConfig, Profile
from apt.providers import MODALITIES, EncoderProvider, FusionProvider
from apt.registry import Registry, default_registry
from apt.tokenizers import Tokenizer

log = logging.getLogger("apt")

#: Token id written into media slots; the fusion replaces its embedding, so any valid id works.
PLACEHOLDER = 0
IGNORE = -100
#: Starts every record's text and every multimodal prompt (see the module docstring).
BOS = "\n"


@dataclass(frozen=True)
class MediaSpec:
    """The encoders and fusion a profile asks for, and the slots each medium takes in a row."""

    encoders: dict[str, EncoderProvider]
    fusion: FusionProvider
    slots: dict[str, int]

    @classmethod
    def from_profile(cls, profile: Profile, registry: Registry | None = None) -> MediaSpec | None:
        """None for a text-only profile (no ``model.encoders``)."""
        m = profile.model
        if not m.encoders:
            return None
        registry = registry or default_registry()
        encoders: dict[str, EncoderProvider] = {}
        for modality, name in m.encoders.items():
            try:
                cls_ = registry.load("encoder", name)
            except AptError as err:
                raise ConfigError(f"model.encoders.{modality}", str(err)) from None
            if not (isinstance(cls_, type) and issubclass(cls_, EncoderProvider)) or cls_.modality != modality:
                served = getattr(cls_, "modality", "?")
                raise ConfigError(f"model.encoders.{modality}",
                                  f"encoder.{name} encodes {served}, not {modality}")
            encoders[modality] = cls_(profile.provider_config(cls_))
        try:
            fusion_cls = registry.load("fusion", m.fusion or "prefix")
        except AptError as err:
            raise ConfigError("model.fusion", str(err)) from None
        assert issubclass(fusion_cls, FusionProvider)
        fusion = fusion_cls(profile.provider_config(fusion_cls))
        slots = {modality: fusion.slots(modality, enc.tokens()) for modality, enc in encoders.items()}
        return cls(encoders, fusion, slots)

    def layout(self, present: list[str]) -> tuple[int, dict[str, int]]:
        """Slots taken by a row with media ``present``, and where each medium's slots start."""
        starts, at = {}, 0
        for modality in MODALITIES:
            if modality in present:
                starts[modality] = at
                at += self.slots[modality]
        return at, starts


@dataclass(frozen=True)
class Record:
    """One usable record: its text ids (leading newline included) and decoded media inputs."""

    ids: list[int]
    media: dict[str, torch.Tensor]
    text: str
    source: str


@dataclass
class Records:
    items: list[Record]
    skipped: int = 0
    truncated: int = 0
    reasons: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def member_path(base: Path, value: Any, where: str) -> Path:
    """The media file a record names, which must be a relative path inside the JSONL's folder.

    A corpus is data someone else may have written: ``../../etc/shadow`` or an absolute path
    would make training read (and, through decode errors, reveal) files outside it.
    """
    if not isinstance(value, str) or not value:
        raise AptError(f"{where}: expected a relative file path (a non-empty string)")
    path = Path(value)
    if path.is_absolute():
        raise AptError(f"{where}: {value!r} is absolute; media paths are relative to the JSONL file's folder")
    root = base.resolve()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise AptError(f"{where}: {value!r} leaves the JSONL file's folder ({root}); keep media inside it")
    return resolved


def read_records(path: Path, spec: MediaSpec, tokenizer: Tokenizer, block_size: int, *, skip_bad: bool = False,
                 field_name: str = "text", key: str = "data.train_path") -> Records:
    """Every record of a multimodal JSONL file, decoded; bad ones stop the load unless ``skip_bad``."""
    if not path.is_file():
        raise AptError(f"{key}: file {str(path)!r} not found; point it at a JSONL corpus")
    out = Records([])
    for lineno, line in _lines(path, key):
        where = f"{path}:{lineno}"
        try:
            record = _record(json.loads(line), path.parent, where, spec, tokenizer, field_name)
        except json.JSONDecodeError as err:
            problem = AptError(f"{where}: not JSON ({err.msg} at column {err.colno})")
        except AptError as err:
            problem = err
        else:
            limit = block_size + 1 - spec.layout(list(record.media))[0]
            if limit < 2:
                raise AptError(f"{where}: its media take {block_size + 1 - limit} of model.block_size "
                               f"{block_size} positions; raise model.block_size")
            if len(record.ids) > limit:
                out.truncated += 1
                record = Record(record.ids[:limit], record.media, record.text, record.source)
            out.items.append(record)
            continue
        if not skip_bad:
            raise AptError(f"{problem} (set data.skip_bad: true to skip bad records)")
        out.skipped += 1
        if len(out.reasons) < 5:
            out.reasons.append(str(problem))
    if not out.items:
        raise AptError(f"{key}: {path} has no usable records" + (f" ({out.skipped} skipped)" if out.skipped else ""))
    return out


def _lines(path: Path, key: str) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, line
    except UnicodeDecodeError as err:
        raise AptError(f"{key}: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def _record(doc: Any, base: Path, where: str, spec: MediaSpec, tokenizer: Tokenizer, field_name: str) -> Record:
    if not isinstance(doc, dict) or not isinstance(doc.get(field_name), str):
        raise AptError(f"{where}: expected a JSON object with a string {field_name!r}")
    text = doc[field_name]
    media = {}
    for modality in MODALITIES:
        if modality not in doc:
            continue
        encoder = spec.encoders.get(modality)
        if encoder is None:
            raise AptError(f"{where}: the record has {modality!r} but model.encoders has no {modality} encoder")
        file = member_path(base, doc[modality], f"{where}: {modality}")
        if not file.is_file():
            raise AptError(f"{where}: {modality} file {doc[modality]!r} not found ({file})")
        try:
            media[modality] = encoder.load(file)
        except AptError as err:
            raise AptError(f"{where}: {modality} {doc[modality]!r}: {err}") from None
        except Exception as err:  # a plugin's decoder failing in a way it did not foresee
            raise AptError(f"{where}: {modality} {doc[modality]!r}: encoder.{encoder.name} could not load it "
                           f"({type(err).__name__}: {err})") from None
    try:
        ids = tokenizer.encode(BOS + text + "\n")
    except AptError as err:
        raise AptError(f"{where}: {err}") from None
    return Record(ids, media, text, where)


def load_records(cfg: DataConfig, spec: MediaSpec, tokenizer: Tokenizer, block_size: int) -> tuple[Records, Records]:
    """The training and validation records of a multimodal profile (``val_path`` or the tail split)."""
    paths = corpus_paths(cfg, required=True)
    train = read_records(paths[0][0], spec, tokenizer, block_size, skip_bad=cfg.skip_bad,
                         field_name=cfg.jsonl_field)
    if cfg.val_path:
        val = read_records(paths[1][0], spec, tokenizer, block_size, skip_bad=cfg.skip_bad,
                           field_name=cfg.jsonl_field, key="data.val_path")
    else:
        cut = int(len(train) * (1 - cfg.val_fraction))
        if cut < 1 or cut >= len(train):
            raise AptError(f"data: {len(train)} records cannot be split by data.val_fraction "
                           f"{cfg.val_fraction}; add records or set data.val_path")
        val = Records(train.items[cut:])
        train = Records(train.items[:cut], train.skipped, train.truncated, train.reasons)
    for name, records in (("training", train), ("validation", val)):
        if records.skipped:
            log.warning("data: skipped %d bad %s record(s) (data.skip_bad), e.g. %s", records.skipped, name,
                        records.reasons[0])
        if records.truncated:
            log.warning("data: %d %s record(s) cut to model.block_size", records.truncated, name)
    return train, val


def collate(records: list[Record], spec: MediaSpec) -> Batch:
    """Rows ``[slots][ids]`` right-padded to the longest; inputs (B, T-1) and targets shifted by one."""
    rows, starts_of = [], []
    for record in records:
        taken, starts = spec.layout(list(record.media))
        rows.append(([PLACEHOLDER] * taken + record.ids, taken))
        starts_of.append(starts)
    T = max(len(seq) for seq, _ in rows) - 1
    tokens = torch.full((len(rows), T), PLACEHOLDER, dtype=torch.long)
    targets = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for r, (seq, taken) in enumerate(rows):
        n = len(seq) - 1
        tokens[r, :n] = torch.tensor(seq[:-1])
        targets[r, :n] = torch.tensor(seq[1:])
        targets[r, :taken] = IGNORE  # the slots, and the leading newline that follows them
    return Batch(tokens, targets, gather_media(records, starts_of))


def gather_media(records: list[Record], starts_of: list[dict[str, int]]) -> Media | None:
    inputs: dict[str, list[torch.Tensor]] = {}
    rows: dict[str, list[int]] = {}
    starts: dict[str, list[int]] = {}
    for r, (record, where) in enumerate(zip(records, starts_of, strict=True)):
        for modality, item in record.media.items():
            inputs.setdefault(modality, []).append(item)
            rows.setdefault(modality, []).append(r)
            starts.setdefault(modality, []).append(where[modality])
    if not inputs:
        return None
    return Media({m: torch.stack(v) for m, v in inputs.items()},
                 {m: torch.tensor(v, dtype=torch.long) for m, v in rows.items()},
                 {m: torch.tensor(v, dtype=torch.long) for m, v in starts.items()})


class RecordBatches:
    """Random records, drawn like :class:`apt.data.Batches` windows (the same for any number of ranks)."""

    def __init__(self, records: Records, spec: MediaSpec, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1) -> None:
        self.records = records.items
        self.spec = spec
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world

    @property
    def samples(self) -> int:
        return len(self.records)

    def get(self, step: int, micro: int = 0, stream: str = "train") -> Batch:
        picks = global_picks(self.seed, stream, step, micro, len(self.records), self.batch_size, self.rank, self.world)
        return collate([self.records[i] for i in picks], self.spec)


def prompt_batch(spec: MediaSpec, tokenizer: Tokenizer, prompt: str, files: Mapping[str, Path]) -> tuple[list[int], Media]:
    """The ids and media of one generation row: slots for ``files``, then the newline and ``prompt``."""
    media = {}
    for modality, file in files.items():
        encoder = spec.encoders.get(modality)
        if encoder is None:
            flag = f"--{modality}"
            raise AptError(f"{flag}: this checkpoint has no {modality} encoder "
                           f"(it has: {', '.join(spec.encoders) or 'none'})")
        if not Path(file).is_file():
            raise AptError(f"--{modality}: file {str(file)!r} not found")
        try:
            media[modality] = encoder.load(Path(file))
        except AptError as err:
            raise AptError(f"--{modality} {file}: {err}") from None
    taken, starts = spec.layout(list(media))
    record = Record(tokenizer.encode(BOS + prompt), media, prompt, "prompt")
    gathered = gather_media([record], [starts])
    if gathered is None:
        raise AptError("give --image or --audio (or both) to generate from media")
    return [PLACEHOLDER] * taken + record.ids, gathered


@torch.no_grad()
def transcribe(model: LanguageModel, spec: MediaSpec, tokenizer: Tokenizer, records: list[Record], *,
               batch_size: int = 64, max_new_tokens: int = 32, device: str | torch.device = "cpu") -> list[str]:
    """Greedy answers for ``records`` given their media (their own text is not shown), up to a newline.

    What caption and transcription accuracy measure: rows of one batch decode together, each
    recomputing its whole (short) sequence with the media at every step.
    """
    model.eval()
    newline = tokenizer.encode("\n")
    answers: list[str] = []
    block = model.dims.block_size
    for first in range(0, len(records), batch_size):
        chunk = records[first:first + batch_size]
        rows, starts_of = [], []
        for record in chunk:
            taken, starts = spec.layout(list(record.media))
            rows.append([PLACEHOLDER] * taken + newline)
            starts_of.append(starts)
        media = gather_media(chunk, starts_of)
        media = media.to(device) if media is not None else None
        out: list[list[int]] = [[] for _ in chunk]
        done = [False] * len(chunk)
        for _ in range(max_new_tokens):
            T = max(len(r) for r in rows)
            if T > block:
                break
            idx = torch.tensor([r + [PLACEHOLDER] * (T - len(r)) for r in rows], device=device)  # (B, T)
            logits = model(idx, media).logits  # (B, T, V)
            last = torch.tensor([len(r) - 1 for r in rows], device=device)
            nxt = logits[torch.arange(len(rows), device=device), last].argmax(-1).tolist()
            for i, token in enumerate(nxt):
                if done[i]:
                    continue
                rows[i].append(token)
                if tokenizer.decode([token]) == "\n":
                    done[i] = True
                else:
                    out[i].append(token)
            if all(done):
                break
        answers += [tokenizer.decode(ids) for ids in out]
    return answers


@torch.no_grad()
def evaluate_records(model: LanguageModel, spec: MediaSpec, records: list[Record], *, batch_size: int = 64,
                     device: str | torch.device = "cpu") -> tuple[float, int]:
    """Mean next-token loss over the text of every record (each once), and the tokens it covers."""
    model.eval()
    total, count = 0.0, 0
    for first in range(0, len(records), batch_size):
        batch = collate(records[first:first + batch_size], spec).to(device)
        logits = model(batch.tokens, batch.media).logits  # (B, T, V)
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(),
                                                   reduction="sum")
        total += losses.item()
        count += int((batch.targets != IGNORE).sum())
    return total / max(1, count), count


def accuracy(answers: list[str], records: list[Record]) -> float:
    """Share of exact matches (surrounding whitespace ignored)."""
    hits = sum(a.strip() == r.text.strip() for a, r in zip(answers, records, strict=True))
    return hits / max(1, len(records))
