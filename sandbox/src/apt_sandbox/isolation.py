"""Kernel isolation primitives used by the launcher.

Everything here is stdlib-only (ctypes) because the launcher imports it with
``python -I -S`` before any site-packages exist on ``sys.path``.  Each function
either succeeds or raises ``OSError``; the launcher turns failures into a report
entry instead of crashing, so a machine without a layer still runs code with the
layers it does have.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal

LAYERS = (
    "user_ns",
    "net_ns",
    "pid_ns",
    "mount_ns",
    "ipc_ns",
    "ro_root",
    "private_tmp",
    "proc",
    "seccomp",
    "uid_drop",
    "no_new_privs",
    "rlimits",
    "cgroup",
    "workdir_tmpfs",
)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000
NAMESPACE_FLAGS = (
    CLONE_NEWNS,
    CLONE_NEWUTS,
    CLONE_NEWIPC,
    CLONE_NEWUSER,
    CLONE_NEWPID,
    CLONE_NEWNET,
    CLONE_NEWCGROUP,
)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), "prctl")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(path: str, *, set_: int = 0, clear: int = 0, propagation: int = 0, recursive: bool) -> None:
    """Change per-mount flags of a mount in this namespace only (never the superblock)."""
    attr = _MountAttr(set_, clear, propagation, 0)
    flags = AT_RECURSIVE if recursive else 0
    rc = _libc.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(rc, f"mount_setattr {path}")


def write_id_maps(uid: int, gid: int) -> None:
    """Map the caller's own ids into its fresh user namespace (the only mapping allowed unprivileged).

    A uid change clears the dumpable flag, which makes ``/proc/self`` root-owned;
    it is restored first so the maps can be written.
    """
    prctl(PR_SET_DUMPABLE, 1)
    with open("/proc/self/setgroups", "w") as fh:
        fh.write("deny")
    with open("/proc/self/gid_map", "w") as fh:
        fh.write(f"{gid} {gid} 1")
    with open("/proc/self/uid_map", "w") as fh:
        fh.write(f"{uid} {uid} 1")


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError(errno.EPERM, "uid drop did not take effect")


def make_private_readonly_root() -> None:
    mount_setattr("/", set_=MOUNT_ATTR_RDONLY, propagation=MS_PRIVATE, recursive=True)


def make_private() -> None:
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def mount_tmpfs(target: str, size_bytes: int) -> None:
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_bytes},nr_inodes=16384,mode=1777")


def mount_workdir(target: str, size_bytes: int, uid: int, gid: int) -> None:
    """A private, size-capped work dir: writes past ``size_bytes`` fail with ENOSPC, and nothing reaches the host disk."""
    mount(
        "tmpfs",
        target,
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        f"size={size_bytes},nr_inodes=65536,mode=0700,uid={uid},gid={gid}",
    )


def bind(source_fd: int, target: str, *, writable: bool) -> None:
    """Bind an already-opened directory onto target; the fd survives masks placed over its path."""
    mount(f"/proc/self/fd/{source_fd}", target, None, MS_BIND | MS_REC)
    if writable:
        try:
            mount_setattr(target, clear=MOUNT_ATTR_RDONLY, recursive=False)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                raise
    else:
        try:
            mount_setattr(target, set_=MOUNT_ATTR_RDONLY, recursive=True)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                raise


def mount_proc() -> None:
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


RLIMIT_NAMES = {
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
    "nofile": resource.RLIMIT_NOFILE,
    "fsize": resource.RLIMIT_FSIZE,
    "nproc": resource.RLIMIT_NPROC,
    "core": resource.RLIMIT_CORE,
}


def apply_rlimits(limits: dict[str, int | None]) -> None:
    """Set soft and hard limits so the sandboxed code cannot raise them back.

    RLIMIT_CPU keeps a hard limit one second above the soft one: the soft limit
    delivers SIGXCPU (catchable, lets the worker report ``cpu`` cleanly) and the
    hard limit SIGKILLs code that ignores it.
    """
    for name, value in limits.items():
        if value is None:
            continue
        which = RLIMIT_NAMES[name]
        hard = value + 1 if name == "cpu" else value
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY and current_hard < hard:
            hard = current_hard
        soft = min(value, hard)
        resource.setrlimit(which, (soft, hard))


# --- seccomp through libseccomp (loaded lazily: it may be absent) ---

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_NE = 1
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7


def SCMP_ACT_ERRNO(err: int) -> int:  # mirrors the C macro's name
    return 0x00050000 | (err & 0xFFFF)


class _ScmpArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "syslog",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "iopl",
    "ioperm",
    "pidfd_getfd",
    "kcmp",
    "vhangup",
    "uselib",
    "personality",
)

AF_UNIX = 1
# The kernel reads an ioctl request as 32 bits and libseccomp compares 64, so
# rules mask the high half: TIOCSTI | 1 << 32 is TIOCSTI to the tty driver.
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
IOCTL_DENIED = (TIOCSTI, TIOCLINUX)


def _load_libseccomp() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        from ctypes.util import find_library

        name = find_library("seccomp")
        if name is None:
            raise OSError(errno.ENOENT, "libseccomp is not installed") from None
        lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ScmpArgCmp),
    ]
    return lib


def install_seccomp(*, allow_network: bool) -> int:
    """Load a default-allow filter that refuses escape-prone syscalls with EPERM.

    Default-allow keeps arbitrary Python (and torch) working; the deny list covers
    kernel attack surface and the ways out of the namespaces.  Returns the number
    of rules loaded.
    """
    lib = _load_libseccomp()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOSYS, "seccomp_init failed")
    eperm = SCMP_ACT_ERRNO(errno.EPERM)
    rules = 0
    try:

        def add(name: str, action: int, *cmps: tuple[int, int, int, int]) -> None:
            nonlocal rules
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                return
            arr = (_ScmpArgCmp * max(1, len(cmps)))(*[_ScmpArgCmp(*c) for c in cmps])
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
            if rc != 0:
                raise OSError(-rc, f"seccomp rule for {name} failed")
            rules += 1

        for name in DENIED_SYSCALLS:
            add(name, eperm)
        if not allow_network:
            add("socket", SCMP_ACT_ERRNO(errno.EACCES), (0, SCMP_CMP_NE, AF_UNIX, 0))
            add("socketpair", SCMP_ACT_ERRNO(errno.EACCES), (0, SCMP_CMP_NE, AF_UNIX, 0))
        ns_flags = (
            CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP
        )
        for flag in NAMESPACE_FLAGS:
            if flag & ns_flags:
                add("clone", eperm, (0, SCMP_CMP_MASKED_EQ, flag, flag))
        add("clone3", SCMP_ACT_ERRNO(errno.ENOSYS))
        for request in IOCTL_DENIED:
            add("ioctl", eperm, (1, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, request))
        rc = lib.seccomp_load(ctx)
        if rc != 0:
            raise OSError(-rc, "seccomp_load failed")
    finally:
        lib.seccomp_release(ctx)
    return rules
