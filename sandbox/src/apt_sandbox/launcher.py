"""The launcher: a single-threaded process that builds the jail and execs the worker.

The parent is often multi-threaded (servers, test runners), where ``preexec_fn``
is unsafe; so the parent only spawns this script, which is free to
unshare, mount, drop privileges and fork before it execs the real worker.

Run as ``python -I -S launcher.py CONFIG_JSON FDS``.  The parent spawns it
with an explicit descriptor list: 0 /dev/null, 1 and 2 output pipes, and the
four protocol descriptors named in FDS, which the launcher moves to
3 request pipe, 4 response pipe, 5 status pipe (launcher -> parent, never
reachable by the worker), 6 Unix socket carrying sealed memfds for large
buffers.  Everything else above 2 is closed before anything else happens,
whatever the parent's caller left inheritable.

Status lines (JSON, newline-terminated) on fd 5: ``{"pid": N}`` once the worker
process exists, ``{"isolation": {...}, "notes": {...}, "facts": {...}}`` just
before exec, and
``{"exit": code, "signal": sig, "cpu": seconds}`` when a PID-namespace worker ends.
``{"fatal": text}`` means the worker never started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

STATUS_FD = 5
PROTOCOL_FDS = (3, 4, 5, 6)
EXIT_FATAL = 121
MAX_FD = 1 << 20


def _status(msg: dict) -> None:
    data = (json.dumps(msg) + "\n").encode()
    with contextlib.suppress(OSError):
        os.write(STATUS_FD, data)


def _fatal(text: str, iso: dict | None = None, notes: dict | None = None) -> None:
    _status({"fatal": text, "isolation": iso or {}, "notes": notes or {}})
    os._exit(EXIT_FATAL)


def _adopt_descriptors(spec: str) -> None:
    """Put the protocol descriptors at 3..6 and close every other descriptor above 2.

    The parent already spawns with an explicit list; this is the guarantee
    that holds even if it did not (a descriptor a shell, a CI runner or socket
    activation left inheritable would otherwise reach the jail, past the mount
    and network namespaces).
    """
    sources = [int(x) for x in spec.split(",")]
    if len(sources) != len(PROTOCOL_FDS) or any(fd <= PROTOCOL_FDS[-1] for fd in sources):
        raise ValueError(f"bad descriptor list {spec!r}")
    for target, source in zip(PROTOCOL_FDS, sources, strict=True):
        os.dup2(source, target)
    os.closerange(PROTOCOL_FDS[-1] + 1, MAX_FD)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)


def _join_cgroup(cfg: dict, iso: dict, notes: dict) -> None:
    """Enter the sandbox's cgroup while still privileged: every later process is born inside it."""
    files = cfg.get("cgroup_procs") or []
    if not files:
        notes["cgroup"] = cfg.get("cgroup_note") or "not requested"
        return
    try:
        for path in files:
            with open(path, "w") as fh:
                fh.write(str(os.getpid()))
    except OSError as exc:
        notes["cgroup"] = f"could not join {exc.filename}: {exc.strerror}; RLIMITs only"
        return
    iso["cgroup"] = True
    notes["cgroup"] = cfg["cgroup_note"]


def _mount_workdir(cfg: dict, iso: dict, notes: dict, facts: dict) -> bool:
    """Put the work dir on its own size-capped tmpfs; False leaves it on the host disk."""
    from apt_sandbox import isolation as kernel

    path = cfg["workdir"]
    uid = cfg["uid"] if cfg.get("uid") is not None else os.geteuid()
    gid = cfg["gid"] if cfg.get("gid") is not None else os.getegid()
    try:
        os.makedirs(path, exist_ok=True)
        kernel.mount_workdir(path, cfg["workdir_bytes"], uid, gid)
        for sub in ("home", "tmp"):
            os.mkdir(os.path.join(path, sub), 0o700)
            if os.geteuid() == 0:
                os.chown(os.path.join(path, sub), uid, gid)
        st = os.statvfs(path)
    except OSError as exc:
        notes["workdir_tmpfs"] = f"{exc}; the work dir stays on the host disk (RLIMIT_FSIZE only)"
        return False
    facts["workdir_bytes"] = st.f_blocks * st.f_frsize
    iso["workdir_tmpfs"] = True
    notes["workdir_tmpfs"] = f"tmpfs of {facts['workdir_bytes'] >> 20} MiB, charged to the sandbox's memory"
    return True


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _open_binds(cfg: dict, notes: dict) -> list[tuple[int, str, bool, bool]]:
    """Open what must stay visible under the masks before the masks cover it."""
    masks = [m for m in cfg["masks"] if os.path.isdir(m)]
    binds = []
    exposed = [(p, False) for p in cfg["expose_ro"]] + [(p, True) for p in cfg.get("expose_rw", [])]
    for path, writable in [*exposed, (cfg["workdir"], True)]:
        if any(_under(m, path) for m in masks):
            notes["expose"] = notes.get("expose", "") + f"{path}: would unmask a private directory, skipped; "
            continue
        if writable or any(_under(path, m) for m in masks):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError as exc:
                notes["expose"] = notes.get("expose", "") + f"{path}: {exc.strerror}; "
                continue
            binds.append((fd, path, writable, os.path.isdir(path)))
    return binds


def _setup_mounts(cfg: dict, iso: dict, notes: dict, facts: dict) -> None:
    """Read-only view of the host with private writable tmp dirs and the workdir bound back in."""
    from apt_sandbox import isolation as kernel

    binds = _open_binds(cfg, notes)

    try:
        kernel.make_private_readonly_root()
        iso["ro_root"] = True
    except OSError as exc:
        notes["ro_root"] = str(exc)
        kernel.make_private()
    masks = [m for m in cfg["masks"] if os.path.isdir(m)]
    mounted = []
    for m in masks:
        try:
            kernel.mount_tmpfs(m, cfg["tmpfs_bytes"])
            mounted.append(m)
        except OSError as exc:
            notes["private_tmp"] = f"{m}: {exc.strerror}"
    iso["private_tmp"] = bool(mounted) and len(mounted) == len(masks)
    for fd, path, writable, is_dir in sorted(binds, key=lambda b: (b[2], len(b[1]))):
        if writable and path == cfg["workdir"] and _mount_workdir(cfg, iso, notes, facts):
            os.close(fd)
            continue
        if is_dir:
            if not os.path.isdir(path):
                os.makedirs(path)
        elif not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        kernel.bind(fd, path, writable=writable)
        os.close(fd)


def _worker_stage(cfg: dict, iso: dict, notes: dict, facts: dict, forked: bool, life_fd: int | None) -> None:
    from apt_sandbox import isolation as kernel

    if forked and iso.get("mount_ns"):
        try:
            kernel.mount_proc()
            iso["proc"] = True
        except OSError as exc:
            notes["proc"] = str(exc)
    uid, gid = cfg.get("uid"), cfg.get("gid")
    if uid is not None and gid is not None and os.geteuid() == 0:
        try:
            kernel.drop_privileges(uid, gid)
            iso["uid_drop"] = True
        except OSError as exc:
            notes["uid_drop"] = str(exc)
    elif uid is not None and os.getuid() == uid and cfg["dropped_early"]:
        iso["uid_drop"] = True
    if not forked:
        _tie_to_parent(cfg)
    if life_fd is not None:
        kernel.set_parent_death_signal(signal.SIGKILL)
        os.set_blocking(life_fd, False)
        with contextlib.suppress(BlockingIOError):
            if os.read(life_fd, 1) == b"":
                os._exit(EXIT_FATAL)
        os.close(life_fd)
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as fh:
        fh.write("1000")
    try:
        kernel.set_no_new_privs()
        iso["no_new_privs"] = True
    except OSError as exc:
        notes["no_new_privs"] = str(exc)
    if not cfg["seccomp"]:
        notes["seccomp"] = "not requested"
    else:
        try:
            n = kernel.install_seccomp(allow_network=cfg["network"])
            iso["seccomp"] = True
            notes["seccomp"] = f"libseccomp, {n} rules"
        except OSError as exc:
            notes["seccomp"] = str(exc)
    try:
        kernel.apply_rlimits(cfg["rlimits"])
        iso["rlimits"] = True
    except (OSError, ValueError) as exc:
        notes["rlimits"] = str(exc)
    missing = [layer for layer in cfg["require"] if not iso.get(layer)]
    if missing:
        _fatal("required isolation unavailable: " + ", ".join(missing), iso, notes)
    if cfg.get("probe"):
        _status({"isolation": iso, "notes": notes, "facts": facts})
        os._exit(0)
    try:
        os.chdir(cfg["workdir"])
    except OSError as exc:
        _fatal(f"cannot enter workdir: {exc}", iso, notes)
    _status({"isolation": iso, "notes": notes, "facts": facts})
    if forked:
        os.close(STATUS_FD)
    else:
        os.set_inheritable(STATUS_FD, False)
    os.closerange(PROTOCOL_FDS[-1] + 1, MAX_FD)
    try:
        os.execve(cfg["python"], cfg["argv"], cfg["env"])
    except OSError as exc:
        os.write(2, f"apt-sandbox: cannot exec worker: {exc}\n".encode())
        os._exit(EXIT_FATAL)


def _tie_to_parent(cfg: dict) -> None:
    """Die with the parent when it asked for it; set after the last credential change, which clears it."""
    parent = cfg.get("parent_pid")
    if parent is None:
        return
    from apt_sandbox import isolation as kernel

    kernel.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(EXIT_FATAL)


def main(argv: list[str]) -> None:
    _adopt_descriptors(argv[2])
    cfg = json.loads(argv[1])
    sys.path.insert(0, cfg["package_root"])
    from apt_sandbox import isolation as kernel

    iso = {layer: False for layer in kernel.LAYERS}
    notes: dict[str, str] = {}
    facts: dict[str, int] = {}
    _join_cgroup(cfg, iso, notes)
    uid, gid = cfg.get("uid"), cfg.get("gid")
    want = cfg["namespaces"]
    cfg["dropped_early"] = False
    if want.get("user"):
        if uid is not None and os.geteuid() == 0:
            try:
                kernel.drop_privileges(uid, gid)
                cfg["dropped_early"] = True
            except OSError as exc:
                notes["uid_drop"] = str(exc)
        try:
            euid, egid = os.geteuid(), os.getegid()
            kernel.unshare(kernel.CLONE_NEWUSER)
            kernel.write_id_maps(euid, egid)
            iso["user_ns"] = True
        except OSError as exc:
            notes["user_ns"] = str(exc)
    elif os.geteuid() == 0:
        notes["user_ns"] = "not needed: launched as root, namespaces created directly and uid dropped"
    else:
        notes["user_ns"] = "not requested"
    if uid is None:
        notes["uid_drop"] = "not attempted: the parent is not root, or uid_drop was disabled"
    for layer, flag in (
        ("mount_ns", kernel.CLONE_NEWNS),
        ("net_ns", kernel.CLONE_NEWNET),
        ("ipc_ns", kernel.CLONE_NEWIPC | kernel.CLONE_NEWUTS),
        ("pid_ns", kernel.CLONE_NEWPID),
    ):
        if not want.get(layer.split("_")[0]):
            notes[layer] = "not requested"
            continue
        try:
            kernel.unshare(flag)
            iso[layer] = True
        except OSError as exc:
            notes[layer] = str(exc)
    if iso["mount_ns"]:
        try:
            _setup_mounts(cfg, iso, notes, facts)
        except OSError as exc:
            _fatal(f"mount setup failed: {exc}", iso, notes)
    notes.setdefault("workdir_tmpfs", "needs a mount namespace; the work dir stays on the host disk")
    if not iso["pid_ns"]:
        _status({"pid": os.getpid()})
        _worker_stage(cfg, iso, notes, facts, forked=False, life_fd=None)
        return
    _tie_to_parent(cfg)
    life_r, life_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(life_w)
        _worker_stage(cfg, iso, notes, facts, forked=True, life_fd=life_r)
        os._exit(EXIT_FATAL)
    os.close(life_r)
    _status({"pid": pid})
    for fd in (0, 1, 3, 4, 6):
        os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue
    cpu = usage.ru_utime + usage.ru_stime
    if os.WIFSIGNALED(status):
        _status({"exit": None, "signal": os.WTERMSIG(status), "cpu": cpu, "maxrss_kb": usage.ru_maxrss})
    else:
        _status({"exit": os.WEXITSTATUS(status), "signal": None, "cpu": cpu, "maxrss_kb": usage.ru_maxrss})
    os._exit(0)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Exception as exc:
        _fatal(f"launcher failed: {type(exc).__name__}: {exc}")
