"""Profiles: the YAML description of a run, validated into typed sections.

Errors point at the line of the offending key (``profiles/x.yaml:12: train.lr: ...``) or at
the ``--set`` flag that introduced it, because a user fixes a file, not a Python object.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from apt import config as cfg
from apt.config import option, require
from apt.errors import AptError, ConfigError
from apt.providers import KINDS, MODALITIES, Provider

#: Seed-era spellings accepted in profiles and ``--set``.
KEY_ALIASES = {
    "model.attention_name": "model.attention",
    "model.ffn_name": "model.ffn",
    "model.router_name": "model.router",
    "model.align_name": "model.align",
}


@dataclass(frozen=True)
class DataConfig:
    train_path: str | None = option(None, doc="text or JSONL corpus; null uses the small corpus shipped with apt")
    val_path: str | None = option(None, doc="separate validation file; null splits off the tail of train_path")
    val_fraction: float = option(0.1, gt=0, lt=1, doc="share of the corpus (its end) held out for validation")
    format: Literal["auto", "text", "jsonl"] = option("auto", doc="auto: .jsonl files are JSONL, others text")
    jsonl_field: str = option("text", doc="JSONL key holding each document's text")
    tokenizer: str = option("char", doc="tokenizer provider (options under providers.tokenizer.<name>): char: "
                                        "vocabulary of the corpus; byte: 256 UTF-8 bytes; bpe: apt-plugin-bpe")
    skip_bad: bool = option(False, doc="with model.encoders: skip (and count) JSONL records whose media file is "
                                       "missing or unreadable instead of stopping at the first")
    prepare: str | None = option(None, doc="the 'apt data prepare NAME' that builds this corpus, named in the "
                                           "error when train_path is missing")


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = option(4, ge=1)
    n_head: int = option(4, ge=1)
    d_model: int = option(128, ge=1)
    block_size: int = option(64, ge=2, doc="context length in tokens")
    dropout: float = option(0.0, ge=0, lt=1)
    bias: bool = option(False, doc="biases in Linear and LayerNorm layers")
    attention: str | None = option(None, doc="attention provider (default tva, falls back to sdpa)")
    ffn: str | None = option(None, doc="feed-forward provider (default dense)")
    router: str | None = option(None, doc="mixture-of-experts router wrapping the FFN (e.g. topk_moe)")
    align: str | None = option(None, doc="alignment objective (e.g. bistate)")
    encoders: dict[str, str] = option(default_factory=dict, doc="media encoders by JSONL key, e.g. {image: vit, "
                                                                 "audio: logmel_conv}; empty: a text-only model")
    fusion: str | None = option(None, doc="how encoder features reach the LM: prefix (default with encoders) "
                                          "or xattn")

    def __post_init__(self) -> None:
        require(self.d_model % self.n_head == 0, "d_model",
                f"must be divisible by n_head={self.n_head}, got {self.d_model}")
        for modality in self.encoders:
            require(modality in MODALITIES, f"encoders.{modality}",
                    f"unknown medium; expected one of {', '.join(MODALITIES)}")
        require(self.fusion is None or bool(self.encoders), "fusion",
                "needs model.encoders (e.g. {image: vit}); drop it for a text-only model")


@dataclass(frozen=True)
class TrainConfig:
    max_iters: int = option(2000, ge=1, doc="optimizer steps")
    batch_size: int = option(12, ge=1)
    grad_accum: int = option(1, ge=1, doc="micro-batches per optimizer step")
    epoch_iters: int | None = option(None, ge=1, doc="steps per epoch (default: one pass over the training tokens)")
    lr: float = option(1e-3, gt=0)
    min_lr: float = option(1e-4, ge=0)
    warmup_iters: int = option(100, ge=0)
    lr_decay_iters: int | None = option(None, ge=1, doc="cosine decay length (default max_iters)")
    weight_decay: float = option(0.1, ge=0)
    beta1: float = option(0.9, ge=0, lt=1)
    beta2: float = option(0.99, ge=0, lt=1)
    grad_clip: float = option(1.0, ge=0, doc="0 disables clipping")
    precision: Literal["fp32", "bf16", "fp16"] = option("fp32", doc="bf16 autocast on CPU; fp16 needs CUDA")
    device: str = option("auto", doc="auto, cpu, cuda, cuda:N")
    threads: int | None = option(None, ge=1, doc="CPU threads (default: torch's choice)")
    seed: int = option(1337)
    eval_interval: int = option(250, ge=1)
    eval_iters: int = option(20, ge=1, doc="validation batches per evaluation")
    patience: int | None = option(None, ge=1, doc="stop after this many evaluations without a better val loss")
    log_interval: int = option(10, ge=1)
    max_nonfinite: int = option(5, ge=1, doc="consecutive NaN/Inf steps tolerated before stopping")
    parallel: Literal["ddp", "fsdp"] = option("ddp", doc="with several ranks: ddp (a full copy per rank) or fsdp "
                                                         "(FSDP2: weights, gradients and optimizer state sharded "
                                                         "per block; sharded checkpoints)")

    def __post_init__(self) -> None:
        require(self.min_lr <= self.lr, "min_lr", f"must be <= lr ({self.lr:g}), got {self.min_lr:g}")


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str = option("runs/{name}", doc="run directory; {name} is the profile name")
    every: int = option(250, ge=1, doc="steps between checkpoints")
    keep_last: int = option(3, ge=1)
    keep_best: bool = option(True, doc="also keep best.pt (lowest val loss)")


@dataclass(frozen=True)
class LoggingConfig:
    jsonl: bool = option(True, doc="metrics.jsonl in the run directory")
    tensorboard: bool = option(False, doc="TensorBoard events in <run dir>/tb (pip install apt-core[tensorboard])")
    progress: bool = option(True, doc="progress bar on a terminal")


@dataclass(frozen=True)
class PluginPolicy:
    """``plugins.<name>``: APT's policy keys, then the plugin's own options in the same section.

    The options are checked against the ``Config`` dataclass the plugin declares (see
    :meth:`Profile.plugin_config`) once the plugin is known to be installed: a profile may carry
    settings for a plugin that is not.
    """

    required: bool = option(False, doc="a failing hook stops the run instead of disabling the plugin")
    enabled: bool | None = option(None, doc="false: never register the plugin; null: its own default "
                                            "(on, unless it sets default_enabled = False)")
    options: dict[str, Any] = option(default_factory=dict, rest=True, doc="the plugin's settings (its Config)")

    def __post_init__(self) -> None:
        require(not (self.required and self.enabled is False), "enabled",
                "a required plugin cannot be disabled; drop required or enabled")


@dataclass(frozen=True)
class Profile:
    name: str = option("run")
    data: DataConfig = option(default_factory=DataConfig)
    model: ModelConfig = option(default_factory=ModelConfig)
    train: TrainConfig = option(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = option(default_factory=CheckpointConfig)
    logging: LoggingConfig = option(default_factory=LoggingConfig)
    providers: dict[str, dict[str, dict[str, Any]]] = option(
        default_factory=dict, doc="provider configs by kind then name")
    schedules: dict[str, Any] = option(default_factory=dict)
    plugins: dict[str, PluginPolicy] = option(default_factory=dict)
    #: Typed provider configs by "kind.name", each built once from ``providers`` (see provider_config).
    configs: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind in self.providers:
            require(kind in KINDS, f"providers.{kind}", f"unknown provider kind; expected one of {', '.join(KINDS)}")

    @property
    def run_dir(self) -> Path:
        return Path(self.checkpoint.dir.format(name=self.name))

    def provider_options(self, kind: str, name: str) -> dict[str, Any]:
        return self.providers.get(kind, {}).get(name, {})

    def provider_config(self, cls: type[Provider]) -> Any:
        """``cls``'s typed config from ``providers.<kind>.<name>``, built the first time it is asked for."""
        key = f"{cls.kind}.{cls.name}"
        if key not in self.configs:
            self.configs[key] = cfg.build(cls.Config, self.provider_options(cls.kind, cls.name), f"providers.{key}")
        return self.configs[key]

    def plugin_config(self, name: str, config_cls: type[Any]) -> Any:
        """Hook-only plugin ``name``'s typed config from ``plugins.<name>``, built the first time.

        Errors name the full key (``plugins.monitor.log_every``) like every other profile error.
        """
        key = f"plugins.{name}"
        if key not in self.configs:
            policy = self.plugins.get(name, PluginPolicy())
            self.configs[key] = cfg.build(config_cls, policy.options, key)
        return self.configs[key]

    def to_dict(self) -> dict[str, Any]:
        return cfg.to_dict(self)


class _Marks:
    """Line numbers of keys in a YAML document, by dotted path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[str, int] = {}

    def where(self, key: str) -> str:
        parts = key.split(".")
        while parts:
            line = self.lines.get(".".join(parts))
            if line is not None:
                return f"{self.source}:{line}"
            parts.pop()
        return self.source


def _mark_lines(node: yaml.Node | None, marks: _Marks, path: str = "") -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = _canonical(f"{path}.{key_node.value}" if path else str(key_node.value))
            marks.lines[child] = key_node.start_mark.line + 1
            _mark_lines(value_node, marks, child)


def _canonical(key: str) -> str:
    return KEY_ALIASES.get(key, key)


def _apply_aliases(data: dict[str, Any]) -> None:
    for old, new in KEY_ALIASES.items():
        section, _, old_key = old.rpartition(".")
        node = data.get(section)
        if isinstance(node, dict) and old_key in node:
            node[new.rpartition(".")[2]] = node.pop(old_key)


def find_profile(name_or_path: str) -> Path:
    """A path as given, else a profile shipped with apt (``tiny_debug`` -> its YAML)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix in ("", ".yaml", ".yml") and "/" not in name_or_path:
        bundled = resources.files("apt") / "profiles" / f"{path.stem}.yaml"
        if bundled.is_file():
            return Path(str(bundled))
    shipped = ", ".join(sorted(p.name.removesuffix(".yaml") for p in shipped_profiles()))
    raise AptError(f"profile {name_or_path!r} not found: pass a YAML file path or one of: {shipped}")


def shipped_profiles() -> list[Path]:
    root = resources.files("apt") / "profiles"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml"))


def read_profile(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """A profile file as data and as a YAML node tree (for line numbers), not yet validated.

    For tools that add their own sections (``apt tune``'s ``search:``); a file that does not
    read is one located line.
    """
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError) as err:
        raise AptError(f"cannot read profile {path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise AptError(f"{path}{line}: invalid YAML: {getattr(err, 'problem', err)}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError("", "a profile must be a mapping of sections (data, model, train, ...)", str(path))
    return data, node


def load_profile(name_or_path: str, overrides: Sequence[str] = ()) -> Profile:
    """Read, override and validate a profile; raise :class:`ConfigError` located in file or flag."""
    path = find_profile(name_or_path)
    marks = _Marks(str(path))
    data, node = read_profile(path)
    _mark_lines(node, marks)
    _apply_aliases(data)
    data.setdefault("name", path.stem)
    origin: dict[str, str] = {}
    for item in overrides:
        key, value = parse_override(item)
        assign(data, key, value, f"--set {item}")
        origin[key] = f"--set {item}"
    try:
        profile = cfg.build(Profile, data)
        build_provider_configs(profile)
        build_plugin_configs(profile)
    except ConfigError as err:
        source = next((src for key, src in origin.items() if err.key == key or err.key.startswith(key + ".")), None)
        raise err.located(source or marks.where(err.key)) from None
    return profile


def build_provider_configs(profile: Profile) -> None:
    """Build (and so validate) the config of every installed provider the profile configures.

    Options for providers that are not installed are kept unchecked: a profile may carry settings
    for optional plugins.
    """
    from apt.registry import default_registry

    registry = default_registry()
    for kind, entries in profile.providers.items():
        for name in entries:
            try:
                cls = registry.load(kind, name)
            except AptError:
                continue
            profile.provider_config(cls)


def build_plugin_configs(profile: Profile) -> None:
    """Check the options of every installed hook-only plugin the profile configures, at load time,
    so a typo fails before the model is built and points at its line."""
    from apt.plugins import check_plugin_options, installed_plugins

    installed = installed_plugins()
    for name in profile.plugins:
        ep = installed.get(name)
        if ep is None:
            continue
        try:
            obj = ep.load()
        except Exception:  # the plugin host reports broken plugins when the run starts
            continue
        check_plugin_options(obj, name, profile)


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=c`` -> (``"a.b"``, YAML value of ``c``), seed-era key spellings mapped to today's."""
    key, value = cfg.parse_assignment(item, "--set", "train.lr=3e-4")
    return _canonical(key), value


def assign(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set dotted ``key`` in profile data, creating sections; ``source`` (a flag, a file) locates errors."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), f"is a value, not a section; cannot set {key}", source)
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def split_seed_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate seed-style ``--model.attention_name X`` / ``--a.b=c`` flags from the rest.

    Returns (remaining argv, overrides in ``a.b=c`` form).
    """
    rest: list[str] = []
    sets: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "." in arg.split("=", 1)[0]:
            if "=" in arg:
                sets.append(arg[2:])
            elif i + 1 < len(argv):
                sets.append(f"{arg[2:]}={argv[i + 1]}")
                i += 1
            else:
                raise AptError(f"{arg}: expected a value, e.g. {arg} VALUE")
        else:
            rest.append(arg)
        i += 1
    return rest, sets
