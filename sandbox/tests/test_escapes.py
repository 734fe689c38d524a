"""Escape and fault suite.

The first part ports the checklist of CodeJail's ``test_jail_code`` (features,
limits, symlinks, malware); the second adds the cases from the issue.  Every
case asserts the exact status and that the host is unaffected (no file
written, no process left behind under a sandbox uid, the test process alive).
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from apt_sandbox import Limits, Sandbox, check
from apt_sandbox.ipc import HEADER_CAP
from apt_sandbox.process import remove_tree

M = "apt_sandbox_cases"

pytestmark = pytest.mark.usefixtures("host_clean")

PROJECT_TREE = Path(__file__).resolve().parent


# --- CodeJail checklist: features ---


def test_hello_world(sb):
    res = sb.call(f"{M}:hello", None)
    assert res.status == "ok"
    assert res.value == "done"
    assert res.stdout == "Hello, world!\n"
    assert res.stderr == "to stderr\n"


def test_arguments_round_trip(sb):
    args = {"argv": ["Hello", "world", "-x"], "n": 3, "f": 2.5, "none": None, "nested": [[1], {"a": True}]}
    res = sb.call(f"{M}:echo", args)
    assert res.status == "ok"
    assert res.value == args


def test_ends_with_exception(sb):
    res = sb.call(f"{M}:fail", "boom")
    assert res.status == "error"
    assert res.stdout == ""
    assert "ValueError: FAIL boom" in res.traceback
    assert res.detail == "ValueError: FAIL boom"


def test_stdin_is_closed(sb):
    res = sb.call(f"{M}:environment", None)
    assert res.status == "ok"
    assert res.value["stdin"] == ""


def test_private_working_directory_is_writable(sb, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = sb.call(f"{M}:write_in_workdir", None)
    assert res.status == "ok"
    assert res.value == "hello"
    assert not (tmp_path / "mydata.txt").exists()


def test_work_dir_is_removed_even_when_locked(sb):
    res = sb.call(f"{M}:lock_workdir", None)
    assert res.status == "ok"
    assert not os.path.exists(res.value)


# --- CodeJail checklist: limits ---


def test_cant_use_too_much_memory(make_sandbox):
    res = make_sandbox(Limits(memory_mb=256, wall_seconds=30)).call(f"{M}:allocate", 400)
    assert res.status == "memory"
    assert res.stdout == ""


def test_raising_the_memory_limit_allows_the_allocation(make_sandbox):
    res = make_sandbox(Limits(memory_mb=1024, wall_seconds=30)).call(f"{M}:allocate", 400)
    assert res.status == "ok"
    assert res.value == 400 * 1024 * 1024


def test_cant_use_too_much_cpu(make_sandbox):
    res = make_sandbox(Limits(cpu_seconds=1, wall_seconds=30)).call(f"{M}:cpu_spin", None)
    assert res.status == "cpu"


def test_ignoring_sigxcpu_still_ends_at_the_hard_cpu_limit_without_a_cgroup(make_sandbox):
    res = make_sandbox(Limits(cpu_seconds=1, wall_seconds=30), disable={"cgroup"}).call(f"{M}:catch_cpu_signal", None)
    assert res.isolation["cgroup"] is False
    assert res.status == "cpu"
    assert res.signal == 9


def test_cant_use_too_much_time(make_sandbox):
    res = make_sandbox(Limits(wall_seconds=1.5)).call(f"{M}:sleep", 20)
    assert res.status == "timeout"
    assert res.value is None


def test_raising_the_wall_limit_lets_it_finish(make_sandbox):
    res = make_sandbox(Limits(wall_seconds=30)).call(f"{M}:sleep", 0.3)
    assert res.status == "ok"
    assert res.value == "woke up"


def test_cant_write_files_outside_the_workdir(sb, tmp_path):
    home = Path(os.path.expanduser("~")) / "apt-sandbox-escape.txt"
    parent_tmp = tmp_path / "escape.txt"
    project = PROJECT_TREE / "escape.txt"
    system = Path("/etc/apt-sandbox-escape.txt")
    targets = [str(home), str(parent_tmp), str(project), str(system)]
    res = sb.call(f"{M}:try_write", targets)
    assert res.status == "ok"
    assert res.value[str(project)] != "written"
    assert res.value[str(system)] != "written"
    assert res.value[str(parent_tmp)] != "written"
    for path in (home, parent_tmp, project, system):
        assert not path.exists()


def test_large_files_are_refused(make_sandbox):
    res = make_sandbox(Limits(file_size_mb=4, wall_seconds=30)).call(f"{M}:big_file", 8)
    assert res.status == "error"
    assert "File too large" in res.detail


def test_open_files_are_limited(make_sandbox):
    res = make_sandbox(Limits(open_files=32, wall_seconds=30)).call(f"{M}:open_many", 1000)
    assert res.status == "ok"
    assert res.value < 32


def test_cant_use_network(sb):
    res = sb.call(f"{M}:http_get", "http://example.com/")
    assert res.status == "error"
    assert res.value is None


def test_cant_see_environment_variables(sb, monkeypatch):
    monkeypatch.setenv("APT_SECRET_TOKEN", "hunter2-secret")
    res = sb.call(f"{M}:environment", None)
    assert res.status == "ok"
    assert "APT_SECRET_TOKEN" not in res.value["env"]
    assert set(res.value["env"]) <= {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
    }


def test_reading_dev_zero_to_the_end_hits_the_memory_limit(make_sandbox):
    res = make_sandbox(Limits(memory_mb=256, wall_seconds=30)).call(f"{M}:read_dev_zero", None)
    assert res.status == "memory"


# --- CodeJail checklist: symlinks and malware ---


def test_symlinks_do_not_reach_host_files(sb, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    res = sb.call(f"{M}:symlink_read", str(secret))
    assert res.status == "error"
    assert "FileNotFoundError" in res.detail or "PermissionError" in res.detail


def test_crash_cpython(sb):
    res = sb.call(f"{M}:segfault", None)
    assert res.status == "killed"
    assert res.signal == 11


def test_cant_read_protected_files(sb):
    res = sb.call(f"{M}:try_read", ["/etc/shadow", os.path.expanduser("~/.bash_history"), "/proc/1/environ"])
    assert res.status == "ok"
    assert not res.value["/etc/shadow"].startswith("read:")
    assert not res.value[os.path.expanduser("~/.bash_history")].startswith("read:")
    assert "APT_" not in res.value["/proc/1/environ"]


def test_cant_find_other_sandboxes_or_host_processes(sb, tmp_path):
    (tmp_path / "host-file").write_text("x")
    other = sb.worker()
    try:
        other.start()
        res = sb.call(f"{M}:environment", None)
    finally:
        other.close()
    assert res.status == "ok"
    assert res.value["proc_pids"] == [1]
    own = os.path.basename(res.value["cwd"])
    listing = res.value["tmp_listing"]
    assert own in listing
    assert [n for n in listing if n.startswith("apt-sandbox-") and n != own] == []
    assert "host-file" not in listing and not any(n.startswith("pytest-of") for n in listing)


# --- additions from the issue ---


def test_fork_bomb(make_sandbox):
    res = make_sandbox(Limits(processes=16, wall_seconds=2)).call(f"{M}:fork_bomb", None)
    assert res.status == "timeout"


def test_process_count_is_capped(make_sandbox):
    res = make_sandbox(Limits(processes=16, wall_seconds=30)).call(f"{M}:fork_until_refused", None)
    assert res.status == "ok"
    assert res.value < 16


def test_memory_bomb(make_sandbox):
    res = make_sandbox(Limits(memory_mb=256, wall_seconds=30)).call(f"{M}:memory_bomb", None)
    assert res.status == "memory"


def test_grandchild_with_setsid_holding_the_pipe(make_sandbox):
    res = make_sandbox(Limits(wall_seconds=30)).call(f"{M}:setsid_grandchild", None)
    assert res.status == "ok"
    assert res.value == "spawned"
    assert res.duration_s < 20


def test_setsid_daemon_dies_without_pid_namespace(make_sandbox):
    sb = make_sandbox(Limits(wall_seconds=30), disable={"pid_ns"})
    res = sb.call(f"{M}:daemon_and_exit", None)
    assert res.isolation["pid_ns"] is False
    assert res.isolation["uid_drop"] is True
    assert res.status == "error"
    assert res.exit_code == 0


def test_reading_parent_environment_through_proc(sb, monkeypatch):
    monkeypatch.setenv("APT_SECRET_TOKEN", "hunter2-secret")
    res = sb.call(f"{M}:read_parent_environ", None)
    assert res.status == "ok"
    assert not any("hunter2" in env for env in res.value)


class _Server:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.mark.parametrize("disable", [(), ("seccomp",)], ids=["all-layers", "netns-only"])
def test_inet_socket_to_a_loopback_server(make_sandbox, disable):
    server = _Server()
    try:
        res = make_sandbox(disable=set(disable)).call(f"{M}:inet_socket", server.port)
    finally:
        server.close()
    assert res.status == "error"
    expected = "PermissionError" if not disable else "OSError"
    assert expected in res.detail
    assert server.connections == 0


def test_huge_stdout_flood(make_sandbox):
    res = make_sandbox(Limits(output_kb=256, wall_seconds=30)).call(f"{M}:flood_stdout", None)
    assert res.status == "output_limit"
    assert len(res.stdout) <= 256 * 1024


def test_raw_fd_flood_on_stderr(make_sandbox):
    res = make_sandbox(Limits(output_kb=256, wall_seconds=30)).call(f"{M}:flood_fd", None)
    assert res.status == "output_limit"
    assert len(res.stderr) <= 256 * 1024


def test_crafted_pickle_is_returned_as_bytes_never_loaded(sb, tmp_path):
    marker = tmp_path / "unpickled"
    res = sb.call(f"{M}:crafted_pickle", str(marker))
    assert res.status == "ok"
    assert isinstance(res.value, bytes) and b"system" in res.value
    assert not marker.exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("json_bomb_nested", "nested deeper"),
        ("json_bomb_length", "exceeds"),
        ("json_bomb_buffers", "exceeds"),
        ("forged_tensor", "does not match"),
        ("forged_dtype", "dtype"),
        ("garbage_on_protocol_pipe", "magic"),
        ("forge_success", "buffer reference"),
        ("forged_shared_fd", "not sealed"),
    ],
)
def test_hostile_messages_are_rejected(make_sandbox, case, message):
    res = make_sandbox(Limits(wall_seconds=20)).call(f"{M}:{case}", None)
    assert res.status == "error"
    assert res.detail.startswith("protocol violation")
    assert message in res.detail


def test_unserialisable_result_is_an_error(sb):
    res = sb.call(f"{M}:bad_return", None)
    assert res.status == "error"
    assert "cannot cross the sandbox boundary" in res.detail


def test_killing_the_parent_process_group(sb):
    res = sb.call(f"{M}:kill_process_group", os.getpgid(0))
    assert res.status == "ok"
    assert "sent" not in res.value.split(",")[:2]
    os.kill(os.getpid(), 0)


def test_subclasses_trick_only_reaches_the_child(sb, tmp_path):
    marker = tmp_path / "owned"
    res = sb.call(f"{M}:subclasses_escape", str(marker))
    assert res.status == "ok"
    assert res.value == "ran system()"
    assert not marker.exists()


def test_frame_walk_finds_no_parent_objects(sb):
    parent_only_secret = "parent-frame-secret"
    res = sb.call(f"{M}:frame_walk", None)
    assert res.status == "ok"
    assert "parent_only_secret" not in res.value
    assert "sb" not in res.value
    assert parent_only_secret not in repr(res.value)


def test_ptrace_and_new_namespaces_are_refused(sb):
    ptrace = sb.call(f"{M}:ptrace_attach", None)
    unshare = sb.call(f"{M}:unshare_user", None)
    assert (ptrace.status, ptrace.value) == ("ok", 1)
    assert (unshare.status, unshare.value) == ("ok", 1)


# --- issue 11: inherited descriptors and the default python path ---


def test_inherited_descriptors_are_closed_before_the_code_runs(sb, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    server = _Server()
    conn = socket.create_connection(("127.0.0.1", server.port))
    file_fd = os.open(secret, os.O_RDONLY)
    dir_fd = os.open(host_dir, os.O_RDONLY | os.O_DIRECTORY)
    high_fd = os.dup2(file_fd, 200)
    fds = (file_fd, dir_fd, high_fd, conn.fileno())
    try:
        for fd in fds:
            os.set_inheritable(fd, True)
        res = sb.call(f"{M}:inherited_fds", list(fds))
    finally:
        for fd in fds[:3]:
            os.close(fd)
        conn.close()
        server.close()
    assert res.status == "ok"
    assert {res.value[str(fd)] for fd in fds} == {"EBADF"}
    listing_own_fd = 1
    assert len(set(res.value["open_fds"]) - {0, 1, 2, 3, 4, 6}) == listing_own_fd
    assert list(host_dir.iterdir()) == []


def test_launcher_closes_descriptors_the_spawn_let_through(tmp_path):
    """The launcher's own close_range, tested without the parent's explicit fd list in front of it."""
    script = """
import os, sys
from apt_sandbox import launcher
opened = os.open(sys.argv[1], os.O_RDONLY)
strays = [os.dup2(opened, 50), os.dup2(opened, 60, inheritable=False)]
os.close(opened)
protocol = [os.dup2(os.open("/dev/null", os.O_RDONLY), 100 + i) for i in range(4)]
launcher._adopt_descriptors(",".join(map(str, protocol)))
alive = []
for fd in (*strays, *protocol, 3, 4, 5, 6):
    try:
        os.fstat(fd)
        alive.append(fd)
    except OSError:
        pass
print(sorted(alive))
"""
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    out = subprocess.run([sys.executable, "-c", script, str(secret)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[3, 4, 5, 6]"


def test_shell_redirections_do_not_reach_the_jail(tmp_path):
    cases_dir = str(PROJECT_TREE)
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    cmd = (
        'exec 9<"$1" 7>>"$2"; exec "$3" -m apt_sandbox run apt_sandbox_cases:inherited_fds '
        '--json "[7, 9]" --path "$4" --wall-seconds 30'
    )
    log = tmp_path / "host.log"
    out = subprocess.run(
        ["bash", "-c", cmd, "sh", str(secret), str(log), sys.executable, cases_dir],
        capture_output=True,
        text=True,
        timeout=60,
    )
    import json

    res = json.loads(out.stdout)
    assert res["status"] == "ok", out.stderr
    assert res["value"]["7"] == res["value"]["9"] == "EBADF"
    assert log.read_text() == ""


def test_default_python_path_drops_the_script_directory_and_cwd(tmp_path, monkeypatch):
    cases_dir = str(PROJECT_TREE)
    script_dir = tmp_path / "project"
    script_dir.mkdir()
    (script_dir / ".env").write_text("API_KEY=hunter2")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text("API_KEY=hunter3")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(script_dir / "run.py")
    fake_main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", [str(script_dir), str(elsewhere), cases_dir, *sys.path])
    sb = Sandbox(Limits(wall_seconds=30))
    assert str(script_dir) not in sb.python_path and str(elsewhere) not in sb.python_path
    assert cases_dir in sb.python_path
    targets = [str(script_dir / ".env"), str(elsewhere / ".env")]
    res = sb.call(f"{M}:try_read", targets)
    assert res.status == "ok"
    assert [res.value[t] for t in targets] == ["FileNotFoundError", "FileNotFoundError"]


# --- issue 11: limits per sandbox, kept by the kernel's cgroup accounting ---


@pytest.fixture(scope="module")
def machine() -> dict:
    return check()


@pytest.fixture
def cgroup(machine):
    if not machine["isolation"]["cgroup"]:
        pytest.skip(f"no cgroup on this machine: {machine['notes'].get('cgroup')}")
    return machine["cgroup"]


def test_check_reports_the_cgroup_and_work_dir_quota_in_force(cgroup, machine):
    assert {"memory", "pids", "cpu"} <= set(cgroup["controllers"])
    assert cgroup["limits"]["memory"] == Limits().memory_mb << 20
    assert cgroup["limits"]["pids"] == Limits().processes + 1
    if machine["isolation"]["workdir_tmpfs"]:
        assert machine["workdir_bytes"] == Limits().workdir_mb << 20


def test_forked_children_count_against_cpu(make_sandbox, cgroup):
    res = make_sandbox(Limits(cpu_seconds=2, wall_seconds=60)).call(f"{M}:cpu_children", 4)
    assert res.status == "cpu"
    assert "cgroup accounting" in res.detail
    assert 2 <= res.usage["cpu_s"] < 3


def test_forked_children_count_against_memory(make_sandbox, cgroup):
    res = make_sandbox(Limits(memory_mb=256, wall_seconds=30)).call(f"{M}:memory_children", {"n": 6, "mb": 64})
    assert res.status == "memory"
    assert res.usage["oom_kills"] >= 1
    assert res.usage["memory_peak_bytes"] <= 256 << 20


def test_memfd_counts_against_memory(make_sandbox, cgroup):
    res = make_sandbox(Limits(memory_mb=256, file_size_mb=1024, wall_seconds=30)).call(f"{M}:memfd_fill", 480)
    assert res.status == "memory"
    assert res.usage["oom_kills"] >= 1
    assert res.usage["memory_peak_bytes"] <= 256 << 20


def test_work_dir_cannot_exceed_its_size(make_sandbox):
    res = make_sandbox(Limits(workdir_mb=32, file_size_mb=16, wall_seconds=30)).call(f"{M}:fill_workdir", 64)
    if not res.isolation["workdir_tmpfs"]:
        pytest.skip(res.isolation_notes["workdir_tmpfs"])
    assert res.status == "ok"
    assert res.value["fs_bytes"] == 32 << 20
    assert res.value["error"] == "ENOSPC"
    assert res.value["written"] <= 32 << 20


def test_a_background_child_dies_after_the_worker_call(sb, cgroup):
    with sb.worker() as w:
        first = w.call(f"{M}:background_child", None)
        second = w.call(f"{M}:list_pids", None)
    assert first.status == "ok" and first.usage["leftovers_killed"] == 1
    assert second.status == "ok" and second.usage["leftovers_killed"] == 0
    if first.isolation["pid_ns"]:
        assert second.value == [1]
    else:
        assert first.value not in second.value


def test_the_jail_init_is_reaped_when_the_parent_is_a_subreaper(sb):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    assert libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    try:
        results = [sb.call(f"{M}:echo", i) for i in range(3)]
        with sb.worker() as w:
            results.append(w.call(f"{M}:echo", 3))
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)
    assert [r.status for r in results] == ["ok"] * 4
    assert _zombie_children() == []


def _zombie_children() -> list[int]:
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        state, ppid = data[data.rfind(b")") + 2 :].split()[:2]
        if int(ppid) == me and state == b"Z":
            found.append(int(name))
    return found


# --- issue 11: replies that try to make the parent pay ---


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.parametrize(
    "case, arg, limits, message",
    [
        ("header_bomb", HEADER_CAP - 64, Limits(wall_seconds=20), "decode budget"),
        ("declared_buffer", 512, Limits(wall_seconds=1.5), None),
    ],
    ids=["header-bomb", "declared-512MiB"],
)
def test_hostile_replies_leave_parent_memory_bounded(make_sandbox, case, arg, limits, message):
    sb = make_sandbox(limits)
    sb.call(f"{M}:echo", None)
    baseline = _rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    res = sb.call(f"{M}:{case}", arg)
    peak = _rss_kb("VmHWM")
    if message is None:
        assert res.status == "timeout"
    else:
        assert res.status == "error" and message in res.detail
    assert (peak - baseline) * 1024 < 4 * HEADER_CAP


def test_a_frame_with_the_wrong_request_id_is_rejected(sb):
    with sb.worker() as w:
        res = w.call(f"{M}:forge_before_answer", None)
        after = w.call(f"{M}:count")
    assert res.status == "error"
    assert "does not carry this request's id" in res.detail
    assert res.value is None
    assert w.restarts == 1 and after.value == 1


def test_a_frame_queued_for_the_next_call_is_rejected(sb):
    import time

    with sb.worker() as w:
        first = w.call(f"{M}:forge_next_answer", None)
        time.sleep(0.6)
        second = w.call(f"{M}:echo", "real")
    assert first.status == "ok" and first.value == "queued"
    assert second.status == "error"
    assert "unsolicited bytes were waiting" in second.detail
    assert second.value is None


@pytest.mark.parametrize(
    "lib, shape",
    [("numpy", [0, 2**63]), ("torch", [0, 2**62]), ("numpy", [0, 2**40, 2**40]), ("torch", [0, -1])],
)
def test_absurd_tensor_shapes_are_error_results(sb, lib, shape):
    res = sb.call(f"{M}:absurd_shape", {"lib": lib, "shape": shape})
    assert res.status == "error"
    assert res.detail.startswith("protocol violation: DecodeError: bad tensor shape")


@pytest.mark.parametrize(
    "disable", [set(), {"mount_ns", "uid_drop"}], ids=["tmpfs-workdir", "host-disk-workdir"]
)
def test_a_deep_directory_tree_is_removed(make_sandbox, disable):
    """Without a mount namespace the tree lands on the host disk (and, here, the interpreter
    is only reachable for the sandbox uid through the namespace's binds, hence no uid drop)."""
    res = make_sandbox(Limits(wall_seconds=60), disable=disable).call(f"{M}:deep_tree", 1500)
    assert res.status == "ok"
    if not disable and not res.isolation["workdir_tmpfs"]:
        pytest.skip(res.isolation_notes["workdir_tmpfs"])
    assert res.isolation["workdir_tmpfs"] is not bool(disable)
    assert not os.path.exists(res.value)


def test_remove_tree_needs_no_recursion_and_stays_inside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    root = tmp_path / "tree"
    path = root
    path.mkdir()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(500):
            os.mkdir("d", dir_fd=fd)
            if i == 250:
                os.symlink(outside, "link", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0, dir_fd=fd))
        os.fchmod(fd, 0)
    finally:
        os.close(fd)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(120)
    try:
        remove_tree(str(root))
    finally:
        sys.setrecursionlimit(limit)
    assert not root.exists()
    assert (outside / "keep.txt").read_text() == "keep"


def test_teardown_failure_is_an_error_result(sb, monkeypatch):
    import apt_sandbox.process as process

    refused: list[str] = []

    def refuse(path: str) -> None:
        refused.append(path)
        raise OSError(errno.EBUSY, "Device or resource busy", path)

    monkeypatch.setattr(process, "remove_tree", refuse)
    res = sb.call(f"{M}:echo", 1)
    monkeypatch.undo()
    for path in refused:
        remove_tree(path)
    assert res.status == "error"
    assert res.detail.startswith("sandbox teardown failed: work dir:")
    assert res.value is None


# --- issue 11: seccomp compares the 32 bits the kernel uses ---


@pytest.mark.parametrize("high_bits", [False, True], ids=["TIOCSTI", "TIOCSTI|1<<32"])
def test_tiocsti_is_refused_whatever_the_high_bits(sb, high_bits):
    res = sb.call(f"{M}:ioctl_tiocsti", high_bits)
    if not res.isolation["seccomp"]:
        pytest.skip(res.isolation_notes["seccomp"])
    assert res.status == "ok"
    assert res.value == errno.EPERM


def test_without_seccomp_the_masked_tiocsti_reaches_the_driver(make_sandbox):
    res = make_sandbox(disable={"seccomp"}).call(f"{M}:ioctl_tiocsti", True)
    assert res.status == "ok"
    assert res.value == errno.ENOTTY


# --- issue 11: the same mechanisms through the unprivileged (user-namespace) route ---


@pytest.fixture(scope="module")
def userns_sandbox() -> Sandbox:
    import shutil

    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if python is None or os.path.realpath(python).startswith(("/root/", "/home/")):
        pytest.skip("no system python3 outside home directories")
    sb = Sandbox(
        Limits(wall_seconds=30, workdir_mb=32, file_size_mb=16),
        user_namespace=True,
        python=python,
        python_path=[str(PROJECT_TREE)],
    )
    try:
        if not sb.probe()[0]["user_ns"]:
            pytest.skip("user namespaces unavailable here")
    except Exception as exc:
        pytest.skip(f"system python3 cannot run the sandbox: {exc}")
    return sb


def test_user_namespace_route_closes_inherited_descriptors(userns_sandbox, tmp_path):
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    dir_fd = os.open(host_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.set_inheritable(dir_fd, True)
        res = userns_sandbox.call(f"{M}:inherited_fds", [dir_fd])
    finally:
        os.close(dir_fd)
    assert res.status == "ok" and res.isolation["user_ns"]
    assert res.value[str(dir_fd)] == "EBADF"
    assert list(host_dir.iterdir()) == []


def test_user_namespace_route_refuses_masked_tiocsti(userns_sandbox):
    res = userns_sandbox.call(f"{M}:ioctl_tiocsti", True)
    if not res.isolation["seccomp"]:
        pytest.skip(res.isolation_notes["seccomp"])
    assert res.status == "ok" and res.value == errno.EPERM


def test_user_namespace_route_caps_the_work_dir(userns_sandbox):
    res = userns_sandbox.call(f"{M}:fill_workdir", 64)
    if not res.isolation["workdir_tmpfs"]:
        pytest.skip(res.isolation_notes["workdir_tmpfs"])
    assert res.status == "ok"
    assert res.value["error"] == "ENOSPC" and res.value["fs_bytes"] == 32 << 20


def test_stale_empty_sandbox_cgroups_are_swept(cgroup):
    from apt_sandbox import cgroups

    group, why = cgroups.create("stale-test", memory=64 << 20, pids=4)
    assert group is not None, why
    try:
        parents = [os.path.dirname(d) for d in group.dirs.values()]
        cgroups.sweep_stale(parents)
        assert all(os.path.isdir(d) for d in group.dirs.values())
        for d in set(group.dirs.values()):
            os.utime(d, (0, 0))
        assert cgroups.sweep_stale(parents) >= len(set(group.dirs.values()))
        assert not any(os.path.exists(d) for d in group.dirs.values())
    finally:
        group.remove()
