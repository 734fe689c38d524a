import pytest
import torch

from apt import checkpoint as ckpt
from apt.atomic import atomic_write
from apt.errors import CheckpointError


def test_save_prunes_and_keeps_best(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save(tmp_path, {"step": step, "w": torch.ones(2) * step}, keep_last=2, best=step == 2)
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [3, 4]
    assert ckpt.load(tmp_path / "checkpoints" / "best.pt")["step"] == 2
    assert ckpt.resolve(tmp_path).name == "best.pt"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp" in p.name]


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def failing(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="is corrupt or not an apt checkpoint"):
        ckpt.load(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="is not an apt checkpoint"):
        ckpt.load(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        ckpt.resolve(tmp_path)


def test_pickled_objects_are_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "apt-checkpoint", "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="corrupt or not an apt checkpoint"):
        ckpt.load(path)
