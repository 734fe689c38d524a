"""Bad provider settings from a plugin: one line naming the fix, exit code 2, no traceback, nothing written."""

import pytest

from core_cli import assert_one_line_error, run


@pytest.mark.parametrize("args, fragment", [
    (["--set", "providers.attention.tva.r=0"], "--set providers.attention.tva.r=0: providers.attention.tva.r: expected a value >= 1, got 0"),
    (["--set", "providers.attention.tva.r=64"], "providers.attention.tva.r: must satisfy 1 <= r < d_head"),
])
def test_bad_provider_settings(tmp_path, env, args, fragment):
    result = run(["train", "-p", "tiny_debug", *args], env=env, cwd=tmp_path)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "runs").exists()
