"""cgroup plumbing that this machine may not exercise end to end.

The escape suite proves the limits on whichever hierarchy the host offers;
these pin down the v2 file protocol (on a stand-in directory, since a host has
either v1 or v2 controllers, never both) and path resolution in containers.
"""

from __future__ import annotations

from pathlib import Path

from apt_sandbox import cgroups


def _fake_v2(tmp_path: Path) -> Path:
    base = tmp_path / "cg"
    base.mkdir()
    (base / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (base / "cgroup.subtree_control").write_text("")
    return base


def test_v2_group_enables_controllers_and_writes_its_limits(tmp_path):
    base = _fake_v2(tmp_path)
    group = cgroups._create_v2(str(base), "apt-sandbox-t", 256 << 20, 17, 1.5)
    path = base / "apt-sandbox-t"
    assert group.version == 2 and group.dirs == {"unified": str(path)}
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (path / "memory.max").read_text() == str(256 << 20)
    assert (path / "memory.swap.max").read_text() == "0"
    assert (path / "pids.max").read_text() == "17"
    assert (path / "cpu.max").read_text() == "150000 100000"
    assert group.procs_files() == [str(path / "cgroup.procs")]
    (path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert group.cpu_seconds() == 2.5
    assert group.oom_kills() == 1


def test_v2_without_memory_and_pids_is_refused(tmp_path):
    base = _fake_v2(tmp_path)
    (base / "cgroup.controllers").write_text("hugetlb\n")
    try:
        cgroups._create_v2(str(base), "apt-sandbox-t", 1 << 28, 4, None)
    except OSError as exc:
        assert "does not offer memory and pids" in str(exc)
    else:
        raise AssertionError("a v2 hierarchy without memory and pids was accepted")
    assert not (base / "apt-sandbox-t").exists()


def test_paths_resolve_against_the_mount_root():
    assert cgroups._join("/", "/sys/fs/cgroup/memory", "/a/b") == "/sys/fs/cgroup/memory/a/b"
    assert cgroups._join("/", "/sys/fs/cgroup/unified", "/") == "/sys/fs/cgroup/unified"
    assert cgroups._join("/docker/x", "/sys/fs/cgroup", "/docker/x/sub") == "/sys/fs/cgroup/sub"
