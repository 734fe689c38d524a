"""The ``apt`` command line.

Built-in commands live in this package; other packages add commands through the entry-point
group ``apt.commands`` (``market = "apt_marketplace.cli:main"``), each a ``main(argv) -> int``.
Only the chosen command's module is imported, so ``apt plugin list`` never loads torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import NoReturn

from apt import __version__
from apt.errors import AptError, UsageError

COMMAND_GROUP = "apt.commands"
BUILTIN = {
    "train": ("apt.cli.run", "train a model from a profile"),
    "generate": ("apt.cli.generate", "sample text, optionally with retrieval and voting"),
    "eval": ("apt.cli.run", "loss and perplexity of a checkpoint on a file"),
    "serve": ("apt.cli.serve", "serve a checkpoint over HTTP (OpenAI completions, streaming)"),
    "plugin": ("apt.cli.plugins", "list and inspect installed providers"),
    "plugin-list": ("apt.cli.plugins", "same as: apt plugin list"),
    "plugin-info": ("apt.cli.plugins", "same as: apt plugin info"),
    "errors": ("apt.cli.errors", "failures recorded by past runs"),
    "data": ("apt.cli.data", "build corpora that plugins provide (apt data prepare digits --out DIR)"),
}

#: Commands of first-party packages, so that a missing one's error says what to install.
PACKAGES = {"market": "apt-marketplace", "sandbox": "apt-sandbox", "index": "apt-plugin-retriever",
            "quantize": "apt-plugin-quant", "export": "apt-plugin-quant", "tune": "apt-plugin-tune",
            "report": "apt-plugin-report", "tokenizer": "apt-plugin-bpe"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``apt train: error: ...`` line (exit 2) instead of a usage dump.

    For every ``apt`` command, including those plugins add through ``apt.commands``.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"apt: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging() -> None:
    logger = logging.getLogger("apt")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Format())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _external() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP) if ep.name not in BUILTIN}


def _usage(external: dict[str, EntryPoint]) -> str:
    lines = [f"usage: apt COMMAND ...   (apt {__version__})", "", "commands:"]
    lines += [f"  {name:<12} {summary}" for name, (_, summary) in BUILTIN.items()]
    lines += [f"  {name:<12} (from {ep.dist.metadata['Name'] if ep.dist else '?'})"
              for name, ep in sorted(external.items())]
    lines += ["", "run 'apt COMMAND --help' for a command's options"]
    return "\n".join(lines)


#: What a shell reports for a process killed by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a reader that goes away early (``apt plugin list | head -1``) ends it quietly."""
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()
    except BrokenPipeError:
        # Python ignores SIGPIPE, so the closed pipe surfaces here and again when the interpreter
        # flushes stdout at exit; pointing stdout at devnull silences that second report.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code


def _main(args: list[str]) -> int:
    _setup_logging()
    external = _external()
    if not args or args[0] in ("-h", "--help"):
        print(_usage(external))
        return 0 if args else 2
    if args[0] == "--version":
        print(f"apt {__version__}")
        return 0
    command, rest = args[0], args[1:]
    try:
        if command in BUILTIN:
            module = __import__(BUILTIN[command][0], fromlist=["run"])
            return module.run(command, rest)
        if command in external:
            return int(external[command].load()(rest) or 0)
        if command in PACKAGES:
            print(f"apt: error: 'apt {command}' comes with {PACKAGES[command]}: pip install {PACKAGES[command]}",
                  file=sys.stderr)
        else:
            print(f"apt: error: unknown command {command!r}; run 'apt --help' for the list", file=sys.stderr)
        return 2
    except AptError as err:
        print(f"{err.prog if isinstance(err, UsageError) else 'apt'}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130

