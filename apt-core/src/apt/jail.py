"""Running a whole ``apt train`` / ``apt eval`` inside apt-sandbox when untrusted code would take part.

The parent decides from metadata alone (the profile document, entry points and the
distributions they come from, :mod:`apt.trust`), before anything imports a provider. When a
provider or hook plugin of the run comes from an untrusted distribution (or ``--sandbox`` is
given) the parent becomes a thin supervisor: it starts one sandboxed process that runs the same
command line through :func:`apt.cli.main` (torch and the model are imported only there),
relays its stdout/stderr live, passes the first Ctrl-C on (the trainer saves a checkpoint, as
in-process), and returns the same exit code. The jail dies with the parent, even on SIGKILL.

What the jail may touch (granted from the run's own inputs, never from the plugin):

- read-only: the whole root filesystem, the import path, the profile file and the data files
  (bound back in when they live under the private ``/tmp``, ``/root``, ``/home`` masks);
- read-write: the run directory (checkpoints, metrics: ``--resume auto`` continues from it)
  and ``APT_HOME/cache`` (tokenized corpora); the rest of ``APT_HOME`` (the trust store,
  the error store, marketplace state) stays read-only;
- no network namespace route, seccomp, a fresh uid as root, and one cgroup with the
  ``--sandbox-memory-mb`` / ``--sandbox-cpus`` limits on top of per-process rlimits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from apt.errors import AptError, RunError
from apt.home import apt_home
from apt.trust import TrustStore, is_trusted

log = logging.getLogger("apt")

#: True inside the jail: the command it runs must not try to sandbox itself again.
INSIDE = False
#: Layers a jailed run cannot do without; a host that cannot give them refuses instead.
REQUIRED_LAYERS = ("net_ns", "mount_ns", "ro_root", "seccomp", "no_new_privs")
ENV_PASSED = ("CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "TOKENIZERS_PARALLELISM")
WALL_SECONDS = 30 * 24 * 3600.0
MEMORY_MB = 16384


@dataclass(frozen=True)
class Untrusted:
    """One piece of code a run would import from an untrusted distribution."""

    what: str
    distribution: str

    def __str__(self) -> str:
        return f"{self.what} from {self.distribution}"


def add_flags(p: argparse.ArgumentParser) -> None:
    """The sandbox flags ``apt train`` and ``apt eval`` share."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sandbox", dest="sandbox", action="store_const", const=True, default=None,
                   help="run the whole job inside apt-sandbox even if every plugin is trusted")
    g.add_argument("--no-sandbox", dest="sandbox", action="store_const", const=False,
                   help="never sandbox: refuse to start if an untrusted plugin would run")
    p.add_argument("--sandbox-memory-mb", type=int, default=MEMORY_MB, metavar="MB",
                   help="memory of the whole sandboxed job (cgroup) and of each of its processes (default 16384)")
    p.add_argument("--sandbox-cpus", type=float, default=None, metavar="N",
                   help="CPU quota of the sandboxed job in cores (default: no quota)")


@dataclass(frozen=True)
class TrainPlan:
    """A training run as seen before anything is imported: its profile, where it came from, what is untrusted."""

    profile: Any
    source: Path
    untrusted: list[Untrusted]

    def grants(self) -> tuple[list[Path], list[Path]]:
        """(read-only, read-write) paths the run needs: profile and data files; run dir and token cache."""
        readable = [self.source]
        data = [Path(v) for v in (self.profile.data.train_path, self.profile.data.val_path) if v]
        # Media files sit beside a multimodal JSONL (apt.media keeps them inside its folder).
        readable += [path.parent for path in data] if self.profile.model.encoders else data
        return readable, [Path(self.profile.run_dir), apt_home() / "cache"]


def plan_training(name_or_path: str, overrides: Sequence[str]) -> TrainPlan | None:
    """What of a training run would come from untrusted distributions, from metadata only.

    ``None`` when the profile does not even read or validate: the in-process path then reports
    the same error, and it fails before importing any provider.
    """
    read = _read_profile(name_or_path, overrides)
    if read is None:
        return None
    profile, source = read
    from apt.providers import MODEL_KINDS
    from apt.registry import DEFAULTS, FALLBACKS, Registry

    registry = Registry()
    store = TrustStore()
    wanted: list[tuple[str, str]] = []
    for kind in MODEL_KINDS:
        name = getattr(profile.model, kind, None) or DEFAULTS.get(kind)
        if name:
            wanted.append((kind, name))
            if registry.info(kind, name) is None and kind in FALLBACKS:
                wanted.append((kind, FALLBACKS[kind]))
    wanted.append(("tokenizer", profile.data.tokenizer or DEFAULTS["tokenizer"]))
    wanted += [("encoder", name) for name in profile.model.encoders.values()]
    if profile.model.encoders:
        wanted.append(("fusion", profile.model.fusion or "prefix"))
    wanted += [(kind, name) for kind, entries in profile.providers.items() for name in entries]
    found = _untrusted_providers(registry, wanted, store)
    for ep in entry_points(group="apt.plugins"):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else "?"
        item = Untrusted(f"hook plugin {ep.name}", dist)
        if not is_trusted(dist, store) and item not in found:
            found.append(item)
    return TrainPlan(profile, source, found)


def plan_checkpoint(checkpoint: str) -> list[Untrusted] | None:
    """What rebuilding the model of ``checkpoint`` would import from untrusted distributions.

    The checkpoint is read with ``weights_only=True`` (data, no code). ``None`` when it cannot be
    read: the in-process path reports that error before it imports any provider.
    """
    from apt import checkpoint as ckpt

    try:
        state = ckpt.load(ckpt.resolve(checkpoint))
    except AptError:
        return None
    return untrusted_for_checkpoint(state)


def plan_generate(args: argparse.Namespace) -> tuple[list[Untrusted], list[Path]] | None:
    """Untrusted code ``apt generate`` would import (the checkpoint's providers, the retriever and the
    voter its flags ask for) and the paths it reads; ``None`` when the checkpoint does not load."""
    from apt.registry import DEFAULTS, Registry

    untrusted = plan_checkpoint(args.checkpoint)
    if untrusted is None:
        return None
    wanted = []
    if args.index is not None:
        wanted.append(("retriever", args.retriever or DEFAULTS["retriever"]))
    if args.vote is not None:
        wanted.append(("voter", DEFAULTS["voter"]))
    extra = [u for u in _untrusted_providers(Registry(), wanted, TrustStore()) if u not in untrusted]
    readable = [Path(p) for p in (args.checkpoint, args.index, args.prompt_file, args.embedding_model, args.image,
                                  args.audio) if p]
    return [*untrusted, *extra], readable


def refuse_untrusted(command: str, checkpoint: str, providers: Sequence[tuple[str, str]] = ()) -> None:
    """For commands that cannot run in the jail (``apt serve`` needs the network): untrusted code
    stops them, be it the checkpoint's or one of ``providers`` ((kind, name): a retriever, a voter)."""
    from apt.registry import Registry

    untrusted = plan_checkpoint(checkpoint)
    if untrusted is not None and providers:
        untrusted += [u for u in _untrusted_providers(Registry(), list(providers), TrustStore()) if u not in untrusted]
    if untrusted and not INSIDE:
        names = sorted({u.distribution for u in untrusted})
        raise AptError(f"{'; '.join(map(str, untrusted))} is not trusted, and apt {command} cannot run inside "
                       f"apt-sandbox (it needs the network): trust it first ('apt market trust {names[0]}')")


def untrusted_for_checkpoint(state: dict[str, Any]) -> list[Untrusted]:
    """Providers that rebuilding a checkpoint's model would import from untrusted distributions."""
    from apt.registry import Registry

    wanted = [(kind, info["name"]) for kind, info in state.get("providers", {}).items()
              if isinstance(info, dict) and isinstance(info.get("name"), str)]
    quant = state.get("quant")
    if isinstance(quant, dict) and isinstance(quant.get("method"), str):
        wanted.append(("quant", quant["method"]))
    tokenizer = state.get("tokenizer")
    if isinstance(tokenizer, dict) and isinstance(tokenizer.get("kind"), str):
        wanted.append(("tokenizer", tokenizer["kind"]))
    return _untrusted_providers(Registry(), wanted, TrustStore())


def _untrusted_providers(registry: Any, wanted: list[tuple[str, str]], store: TrustStore) -> list[Untrusted]:
    found: list[Untrusted] = []
    for kind, name in wanted:
        info = registry.info(kind, name)
        if info is not None and not is_trusted(info.distribution, store):
            item = Untrusted(info.key, info.distribution)
            if item not in found:
                found.append(item)
    return found


def _read_profile(name_or_path: str, overrides: Sequence[str]) -> tuple[Any, Path] | None:
    """The profile as :func:`apt.profile.load_profile` builds it, minus the provider-config checks
    that import providers."""
    import yaml

    from apt import config as cfg
    from apt import profile as prof

    try:
        path = prof.find_profile(name_or_path)
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data = {} if data is None else data
        if not isinstance(data, dict):
            return None
        prof._apply_aliases(data)
        data.setdefault("name", path.stem)
        for item in overrides:
            key, value = prof.parse_override(item)
            prof.assign(data, key, value, f"--set {item}")
        profile = cfg.build(prof.Profile, data)
    except (AptError, OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return profile, path


def decide(command: str, untrusted: list[Untrusted], forced: bool | None) -> bool:
    """Whether to run in the jail; raises the one-line refusal when the user's flags forbid it."""
    if INSIDE:
        return False
    names = sorted({u.distribution for u in untrusted})
    listing = "; ".join(str(u) for u in untrusted)
    if forced is False and untrusted:
        raise AptError(f"--no-sandbox: {listing} is not trusted and would run in this process; "
                       f"trust it first ('apt market trust {names[0]}') or drop --no-sandbox to run "
                       f"apt {command} inside apt-sandbox")
    if not (forced or untrusted):
        return False
    try:
        import apt_sandbox  # noqa: F401
    except ImportError:
        why = f"{listing} is not trusted" if untrusted else "--sandbox was given"
        raise AptError(f"{why} and must run inside apt-sandbox: pip install apt-sandbox, "
                       f"or trust it with 'apt market trust {names[0] if names else 'NAME'}'") from None
    return True


def run(command: str, argv: Sequence[str], *, readable: Sequence[Path], writable: Sequence[Path],
        args: argparse.Namespace, untrusted: Sequence[Untrusted]) -> int:
    """Run ``apt COMMAND ARGV`` inside apt-sandbox and return its exit code."""
    from apt_sandbox import IsolationError, Limits, Sandbox, SandboxError

    granted = []
    for path in writable:
        path.mkdir(parents=True, exist_ok=True)
        granted.append(path.resolve())
        _drop_links(granted[-1])
    exposed = [p.resolve() for p in readable if p.exists()]
    memory_mb = getattr(args, "sandbox_memory_mb", MEMORY_MB)
    limits = Limits(memory_mb=memory_mb, cpu_seconds=None, wall_seconds=WALL_SECONDS,
                    open_files=4096, file_size_mb=1 << 20, processes=1024, workdir_mb=1024,
                    cpu_cores=getattr(args, "sandbox_cpus", None))
    sandbox = Sandbox(limits, network=False, require=REQUIRED_LAYERS, expose=exposed, writable=granted,
                      env={k: os.environ[k] for k in ENV_PASSED if k in os.environ}, die_with_parent=True)
    why = f"untrusted: {'; '.join(map(str, untrusted))}" if untrusted else "--sandbox"
    log.info(f"running apt {command} inside apt-sandbox ({why}); writable: "
             + ", ".join(str(p) for p in granted))
    request = {"argv": [command, *argv], "cwd": os.getcwd(), "apt_home": str(apt_home())}
    try:
        result = sandbox.call("apt.jail:inside", request, on_output=_relay, forward_interrupt=True)
    except IsolationError as err:
        raise AptError(f"this machine cannot sandbox apt {command} ({err}); "
                       f"trust the plugin to run it in-process, or see 'apt sandbox check'") from None
    except SandboxError as err:
        raise RunError(f"apt {command}: {err}") from None
    for path in granted:
        _drop_links(path)
    if result.status == "ok" and isinstance(result.value, int):
        return result.value
    if result.status == "memory":
        raise RunError(f"the sandboxed run ran out of memory ({result.detail}); "
                       f"raise --sandbox-memory-mb (now {memory_mb})")
    if result.status == "killed" and result.signal:
        return 128 + result.signal
    last = (result.traceback or result.detail or "").strip().splitlines()
    raise RunError(f"the sandboxed run failed ({result.status}): {last[-1] if last else 'no detail'}")


def _drop_links(root: Path) -> None:
    """Remove the symbolic links a jailed run left in a directory it could write.

    Inside the jail a link is harmless (the root is read-only), but the next in-process run (once
    the plugin is trusted, or a plain ``--resume auto``) would follow ``checkpoints -> /etc`` with
    the user's full rights. APT itself never makes links there.
    """
    found = [Path(d) / n for d, dirs, files in os.walk(root) for n in (*dirs, *files) if (Path(d) / n).is_symlink()]
    for link in found:
        link.unlink(missing_ok=True)
    if found:
        log.warning(f"removed {len(found)} symbolic link(s) the sandboxed run left in {root}: "
                    + ", ".join(str(p) for p in found[:5]))


def _relay(stream: str, data: bytes) -> None:
    out = sys.stdout if stream == "stdout" else sys.stderr
    out.flush()
    out.buffer.write(data)
    out.buffer.flush()


def inside(request: dict[str, Any]) -> int:
    """The jail's side: the same command line, in-process from here on, with the same exit code."""
    global INSIDE
    INSIDE = True
    os.environ["APT_HOME"] = request["apt_home"]
    try:
        os.chdir(request["cwd"])
    except OSError:
        os.chdir("/")
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from apt.cli import main

    try:
        return main(request["argv"])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
