"""``apt sandbox ...`` (also ``python -m apt_sandbox``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

PROG = "apt sandbox"


class _Parser(argparse.ArgumentParser):
    """argparse that reports one line naming the fix, exit 2, no usage dump or traceback."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _fail(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_limits(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("limits")
    g.add_argument("--memory-mb", type=_positive_int, default=2048, help="address-space limit (default 2048)")
    g.add_argument("--cpu-seconds", type=_positive_int, default=30, help="CPU time limit (default 30)")
    g.add_argument("--wall-seconds", type=_positive_float, default=60.0, help="wall-clock limit (default 60)")
    g.add_argument("--open-files", type=_positive_int, default=256, help="open file descriptors (default 256)")
    g.add_argument("--file-size-mb", type=_positive_int, default=64, help="largest file written (default 64)")
    g.add_argument("--processes", type=_positive_int, default=64, help="processes for the sandbox uid (default 64)")
    g.add_argument("--output-kb", type=_positive_int, default=1024, help="cap per output stream (default 1024)")
    g.add_argument("--workdir-mb", type=_positive_int, default=256, help="size of the work dir's tmpfs (default 256)")
    g.add_argument("--cpu-cores", type=_positive_float, default=None, help="CPU quota in cores (cgroup; default none)")
    g.add_argument(
        "--network", action="store_true", help="keep host networking (no network namespace or socket filter)"
    )
    g.add_argument(
        "--require", action="append", default=[], metavar="LAYER", help="fail unless this isolation layer is achieved"
    )


def _limits(ns: argparse.Namespace) -> Any:
    from apt_sandbox.limits import Limits

    return Limits(
        memory_mb=ns.memory_mb,
        cpu_seconds=ns.cpu_seconds,
        wall_seconds=ns.wall_seconds,
        open_files=max(ns.open_files, 16),
        file_size_mb=ns.file_size_mb,
        processes=ns.processes,
        output_kb=ns.output_kb,
        workdir_mb=ns.workdir_mb,
        cpu_cores=ns.cpu_cores,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Run code in the APT sandbox and inspect its isolation.")
    sub = parser.add_subparsers(dest="command", metavar="{run,check,validate}", parser_class=_Parser)
    run = sub.add_parser("run", help="call MODULE:FUNC with a JSON argument and print the result as JSON")
    run.add_argument("target", metavar="MODULE:FUNC")
    run.add_argument("--json", dest="json_args", metavar="ARGS", help="JSON value passed as the single argument")
    run.add_argument(
        "--path", action="append", default=[], metavar="DIR", help="extra import path for the child (repeatable)"
    )
    _add_limits(run)
    check = sub.add_parser("check", help="print which isolation layers this machine supports")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    val = sub.add_parser("validate", help="validate an unpacked plugin wheel (import, providers, apt_self_test)")
    val.add_argument("site_dir", metavar="SITE_DIR")
    val.add_argument("distribution", metavar="DIST")
    _add_limits(val)
    return parser


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {"bytes": len(obj)}
    shape = getattr(obj, "shape", None)
    if shape is not None:
        return {"tensor": {"dtype": str(getattr(obj, "dtype", "")), "shape": list(shape)}}
    return repr(obj)


def _cmd_run(ns: argparse.Namespace) -> int:
    import os

    from apt_sandbox.result import IsolationError, SandboxError
    from apt_sandbox.sandbox import _MISSING, Sandbox, default_python_path

    if ":" not in ns.target or ns.target.startswith(":") or ns.target.endswith(":"):
        return _fail(f"target {ns.target!r} must look like 'package.module:function'")
    args: Any = _MISSING
    if ns.json_args is not None:
        try:
            args = json.loads(ns.json_args)
        except json.JSONDecodeError as exc:
            return _fail(
                f"--json is not valid JSON ({exc.msg} at position {exc.pos}); quote it, e.g. --json '{{\"x\": 1}}'"
            )
    extra = [os.path.abspath(p) for p in ns.path]
    try:
        sb = Sandbox(
            _limits(ns),
            network=ns.network,
            require=ns.require,
            python_path=[*extra, *default_python_path()],
        )
        res = sb.call(ns.target, args)
    except (ValueError, TypeError) as exc:
        return _fail(f"{exc}; run 'apt sandbox check' to list isolation layers")
    except IsolationError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}; drop --require or run on a host that supports it\n")
        return 1
    except SandboxError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    print(json.dumps(res.to_dict(), indent=2, default=_json_default))
    return 0 if res.ok else 1


def _cmd_check(ns: argparse.Namespace) -> int:
    from apt_sandbox.sandbox import check

    report = check()
    if ns.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"kernel {report['kernel']}, python {report['python']}, euid {report['euid']}")
    for layer, achieved in report["isolation"].items():
        note = report["notes"].get(layer, "")
        print(f"  {layer:<13} {'yes' if achieved else 'no ':<4} {note}")
    for key, note in report["notes"].items():
        if key not in report["isolation"]:
            print(f"  note: {key}: {note}")
    group = report["cgroup"]
    if group is None:
        print("limits: RLIMITs per process only (no cgroup could be made)")
    else:
        shown = ", ".join(f"{k}={v}" for k, v in group["limits"].items())
        print(f"limits: cgroup v{group['version']} per sandbox ({shown}) over RLIMITs per process")
    quota = report["workdir_bytes"]
    print(f"work dir: {'tmpfs of ' + str(quota >> 20) + ' MiB' if quota else 'host disk, RLIMIT_FSIZE per file only'}")
    if report["bubblewrap"]:
        print(f"alternative backend: bubblewrap at {report['bubblewrap']} (not used)")
    return 0


def _cmd_validate(ns: argparse.Namespace) -> int:
    import os

    from apt_sandbox.validate import validate_plugin

    if not os.path.isdir(ns.site_dir):
        return _fail(f"SITE_DIR {ns.site_dir!r} is not a directory; pass the folder holding the unpacked wheel")
    report = validate_plugin(ns.site_dir, ns.distribution, _limits(ns))
    print(json.dumps(report.to_dict(), indent=2))
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``apt sandbox`` (group ``apt.commands``) and ``python -m apt_sandbox``."""
    parser = build_parser()
    try:
        ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if ns.command is None:
        return _fail("missing command; use one of: run, check, validate")
    handler = {"run": _cmd_run, "check": _cmd_check, "validate": _cmd_validate}[ns.command]
    return handler(ns)

