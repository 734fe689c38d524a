"""Escape and fault suite.

The first part ports the checklist of CodeJail's ``test_jail_code`` (features,
limits, symlinks, malware); the second adds the cases from the issue.  Every
case asserts the exact status and that the host is unaffected (no file
written, no process left behind under a sandbox uid, the test process alive).
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from apt_sandbox import Limits

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


def test_ignoring_sigxcpu_still_ends_at_the_hard_cpu_limit(make_sandbox):
    res = make_sandbox(Limits(cpu_seconds=1, wall_seconds=30)).call(f"{M}:catch_cpu_signal", None)
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
        ("json_bomb_nested", "unparseable"),
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
