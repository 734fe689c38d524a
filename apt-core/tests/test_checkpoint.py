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


# -- sharded checkpoints (step-N.dcp directories written through torch.distributed.checkpoint) ----


def _sharded(run_dir, step, *, keep_last=3, best=False, value=None):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(float(step) if value is None else value)
    return model, ckpt.save_sharded(run_dir, {"step": step, "note": "meta"}, {"model": model.state_dict()},
                                    keep_last=keep_last, best=best, main=True)


def test_sharded_checkpoint_is_a_verified_directory_that_loads_into_a_model(tmp_path):
    model, path = _sharded(tmp_path, 7, best=True)
    assert path.name == "step-00000007.dcp" and (path / ckpt.META_FILE).is_file()
    state = ckpt.load(path)
    assert state["step"] == 7 and state["note"] == "meta" and "model" not in state
    assert set(state["shards"]) == {f.name for f in path.iterdir() if f.name != ckpt.META_FILE}
    fresh = torch.nn.Linear(3, 2)
    ckpt.load_shards(path, fresh)
    torch.testing.assert_close(fresh.state_dict(), model.state_dict(), rtol=0, atol=0)
    assert ckpt.resolve(tmp_path).name == "best.dcp" and ckpt.resolve(path) == path
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp" in p.name]


def test_sharded_checkpoints_rotate_and_the_same_step_can_be_saved_again(tmp_path):
    for step in (1, 2, 3):
        _sharded(tmp_path, step, keep_last=2)
    _, path = _sharded(tmp_path, 3, keep_last=2, value=9.0)
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [2, 3]
    fresh = torch.nn.Linear(3, 2)
    ckpt.load_shards(path, fresh)
    assert fresh.weight.eq(9.0).all(), "the second save of step 3 replaced the first"


def test_a_damaged_or_missing_shard_is_caught_by_its_checksum_and_resume_falls_back(tmp_path):
    _sharded(tmp_path, 1)
    _, newest = _sharded(tmp_path, 2)
    shard = next(f for f in newest.iterdir() if f.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{shard.name} does not match its sha256 checksum"):
        ckpt.load(newest)
    found = ckpt.latest(tmp_path)
    assert found.path.name == "step-00000001.dcp"
    assert found.skipped == [(newest, f"is damaged: shard file {shard.name} does not match its sha256 checksum")]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"is incomplete: shard file {shard.name} is missing"):
        ckpt.load(newest)


def test_a_manifest_cannot_point_outside_its_directory(tmp_path):
    _, path = _sharded(tmp_path, 1)
    outside = tmp_path / "secret"
    outside.write_bytes(b"x")
    state = ckpt.load(path)
    state["shards"] = {"../../secret": state["shards"].popitem()[1]}
    ckpt.save_file(path / ckpt.META_FILE, {k: v for k, v in state.items() if k not in ("format", "format_version")})
    with pytest.raises(CheckpointError, match=r"shard file \.\./\.\./secret is missing"):
        ckpt.load(path)


def test_a_sharded_checkpoint_for_another_model_names_the_directory(tmp_path):
    _, path = _sharded(tmp_path, 1)
    with pytest.raises(CheckpointError, match=rf"sharded checkpoint {path} does not match its model"):
        ckpt.load_shards(path, torch.nn.Linear(4, 2))


# -- quantised model files (DIR/model.pt with a quant recipe) ----------------------------------

FAKE_QUANT = '''
import copy
from dataclasses import dataclass
from apt.config import option
from apt.providers import QuantProvider

@dataclass(frozen=True)
class Cfg:
    scale: float = option(1.0, gt=0)

class Double(QuantProvider):
    """Casts to float64 (a stand-in rewrite: the state dict only loads into the rewritten model)."""
    name = "double"
    Config = Cfg
    devices = ("cpu",)
    applied = []
    def apply(self, model):
        import torch
        Double.applied.append(self.config.scale)
        return copy.deepcopy(model).to(torch.float64)
'''


def _float_state(vocab: int = 11) -> tuple[torch.nn.Module, dict]:
    from apt.model import ModelBuilder
    from apt.profile import load_profile
    from apt.tokenizers import CharTokenizer

    profile = load_profile("tiny_debug", ["model.n_layer=1", "model.d_model=16", "model.n_head=2",
                                          "model.block_size=8", "model.attention=sdpa"])
    torch.manual_seed(0)
    built = ModelBuilder(profile, vocab).build()
    state = {"step": 7, "profile": profile.to_dict(), "providers": built.providers,
             "tokenizer": CharTokenizer("abcdefghijk"[:vocab]).state(), "model": built.model.state_dict()}
    return built.model.eval(), state


@pytest.fixture
def fake_quant(tmp_path, on_path):
    from apt.testing import make_distribution

    on_path(make_distribution(tmp_path / "site", "fakeprov-quant", "0.1.0",
                              entry_points={"apt.providers": {"quant.double": "fakeprov.quant:Double"}},
                              modules={"fakeprov/__init__.py": "", "fakeprov/quant.py": FAKE_QUANT}))
    import importlib

    return importlib.import_module("fakeprov.quant").Double


def test_model_directory_resolves_and_loads_through_its_quant_recipe(tmp_path, fake_quant):
    model, state = _float_state()
    quantised = model.to(torch.float64)
    out = tmp_path / "q"
    path = ckpt.save_file(out / ckpt.MODEL_FILE, {**state, "model": quantised.state_dict(),
                                                  "quant": {"method": "double", "options": {"scale": 2.0}}})
    assert path == out / "model.pt" and ckpt.resolve(out) == path
    assert ckpt.load(path)["format"] == "apt-checkpoint"
    loaded = ckpt.load_model(out)
    assert fake_quant.applied == [2.0]
    assert loaded.path == path and loaded.state["step"] == 7
    assert all(p.dtype == torch.float64 for p in loaded.model.parameters())
    x = torch.randint(0, 11, (2, 8))
    assert torch.equal(loaded.model(x).logits, quantised(x).logits)
    with pytest.raises(CheckpointError, match=r"quant\.double runs on cpu only: pass --device cpu"):
        ckpt.load_model(out, device="meta")


def test_model_directory_inside_a_run_directory_wins_over_the_run(tmp_path):
    ckpt.save(tmp_path, {"step": 1}, keep_last=1, best=True)
    (tmp_path / "int8").mkdir()
    assert ckpt.resolve(tmp_path / "int8").name == "best.pt", "an empty directory falls back to its parent run"
    ckpt.save_file(tmp_path / "int8" / "model.pt", {"step": 1})
    assert ckpt.resolve(tmp_path / "int8") == tmp_path / "int8" / "model.pt"
    assert ckpt.resolve(tmp_path).name == "best.pt"
    empty = tmp_path / "elsewhere" / "empty"
    empty.mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"or .*empty/model\.pt \(from apt quantize\)"):
        ckpt.resolve(empty)


def test_quantised_checkpoint_without_its_provider_says_what_to_install(tmp_path):
    from importlib.metadata import entry_points

    from apt.registry import Registry

    model, state = _float_state()
    ckpt.save_file(tmp_path / "model.pt", {**state, "quant": {"method": "int8_dynamic", "options": {}}})
    registry = Registry([ep for ep in entry_points(group="apt.providers") if not ep.name.startswith("quant.")])
    with pytest.raises(CheckpointError, match=r"model\.pt is quantised with quant\.int8_dynamic: "
                                              r"pip install apt-plugin-quant$"):
        ckpt.load_model(tmp_path, registry=registry)
    ckpt.save_file(tmp_path / "model.pt", {**state, "quant": "int8"})
    with pytest.raises(CheckpointError, match="invalid quantisation recipe"):
        ckpt.load_model(tmp_path, registry=registry)
