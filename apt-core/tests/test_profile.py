import pytest

from apt.errors import AptError, ConfigError
from apt.profile import load_profile, parse_override, shipped_profiles, split_seed_flags


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return str(path)


def test_shipped_profiles_validate():
    names = {p.stem for p in shipped_profiles()}
    assert {"tiny_debug", "shakespeare_char"} <= names
    for name in names:
        assert load_profile(name).name == name


def test_error_points_at_the_line(tmp_path):
    path = write(tmp_path, "name: x\ntrain:\n  batch_size: 4\n  lr: -1\n")
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert str(err.value) == f"{path}:4: train.lr: expected a value > 0, got -1.0"


def test_unknown_key_points_at_its_line_and_suggests(tmp_path):
    path = write(tmp_path, "model:\n  n_layer: 2\n  n_heads: 2\n")
    with pytest.raises(ConfigError, match=r":3: model.n_heads: unknown key \(did you mean 'n_head'\?\)"):
        load_profile(path)


def test_cross_field_check(tmp_path):
    path = write(tmp_path, "model:\n  d_model: 30\n  n_head: 4\n")
    with pytest.raises(ConfigError, match=r"p.yaml:2: model.d_model: must be divisible by n_head=4"):
        load_profile(path)


def test_invalid_yaml_reports_line(tmp_path):
    path = write(tmp_path, "model:\n  n_layer: [1\n")
    with pytest.raises(AptError, match=r"p.yaml:3: invalid YAML"):
        load_profile(path)


def test_set_overrides_and_blames_the_flag(tmp_path):
    profile = load_profile("tiny_debug", ["train.lr=3e-4", "model.attention=sdpa", "data.val_path=null"])
    assert profile.train.lr == 3e-4 and profile.model.attention == "sdpa" and profile.data.val_path is None
    with pytest.raises(ConfigError, match=r"^--set train.batch_size=0: train.batch_size: expected a value >= 1"):
        load_profile("tiny_debug", ["train.batch_size=0"])
    with pytest.raises(ConfigError, match=r"train.lrr: unknown key \(did you mean 'lr'\?\)"):
        load_profile("tiny_debug", ["train.lrr=1"])
    with pytest.raises(AptError, match="expected KEY=VALUE, e.g. --set train.lr=3e-4"):
        parse_override("train.lr")


def test_seed_style_flags_and_aliases():
    rest, sets = split_seed_flags(["-p", "x", "--model.attention_name", "flash_v2", "--train.lr=0.1", "--strict"])
    assert rest == ["-p", "x", "--strict"]
    assert sets == ["model.attention_name=flash_v2", "train.lr=0.1"]
    assert load_profile("tiny_debug", sets).model.attention == "flash_v2"


def test_alias_key_in_yaml(tmp_path):
    path = write(tmp_path, "model:\n  attention_name: tva_default\n")
    assert load_profile(path).model.attention == "tva_default"


def test_missing_profile_lists_shipped_ones():
    with pytest.raises(AptError, match="not found: pass a YAML file path or one of: .*tiny_debug"):
        load_profile("nope")
