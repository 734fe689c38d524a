"""``apt generate`` with the KV cache (default), ``--no-cache`` and ``--prompt-file``/``--batch``, through the CLI."""

import json
import os

import pytest

from core_cli import SMALL, assert_one_line_error, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate_cache")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["APT_HOME"] = str(root / "apt_home")
    result = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=30",
                  "--set", "train.eval_interval=30"], env=env, cwd=root)
    assert result.returncode == 0, result.stderr
    return root, env, str(root / "runs" / "tiny_debug")


@pytest.mark.parametrize("temperature", ["0", "0.9"])
def test_the_cache_changes_nothing_but_speed_past_the_block_size(trained, temperature):
    root, env, ckpt = trained
    args = ["generate", "--checkpoint", ckpt, "--prompt", "ROMEO:", "--max-new-tokens", "60",
            "--temperature", temperature, "--seed", "3", "--json"]
    cached, recomputed = run(args, env=env, cwd=root), run([*args, "--no-cache"], env=env, cwd=root)
    assert cached.returncode == recomputed.returncode == 0, cached.stderr + recomputed.stderr
    text = json.loads(cached.stdout)["text"]
    assert len(text) == 60 and text == json.loads(recomputed.stdout)["text"]
    assert "KV cache" not in cached.stderr


def test_prompt_file_in_batches_equals_one_by_one(trained, tmp_path):
    root, env, ckpt = trained
    prompts = ["ROMEO:", "JULIET:", "", "First Citizen: we are accounted poor citizens", "All:"]
    file = tmp_path / "prompts.txt"
    file.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    common = ["--checkpoint", ckpt, "--max-new-tokens", "24", "--temperature", "0.9", "--seed", "4", "--stop", "\n"]
    batched = run(["generate", *common, "--prompt-file", str(file), "--batch", "3", "--json"], env=env, cwd=root)
    assert batched.returncode == 0, batched.stderr
    rows = [json.loads(line) for line in batched.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    for row in rows:
        alone = run(["generate", *common, "--prompt", row["prompt"], "--json"], env=env, cwd=root)
        assert json.loads(alone.stdout)["text"] == row["text"]
    as_text = run(["generate", *common, "--prompt-file", str(file), "--batch", "2"], env=env, cwd=root)
    assert as_text.stdout == "\n---\n".join(r["prompt"] + r["text"] for r in rows) + "\n"


@pytest.mark.parametrize("extra, fragment", [
    (["--prompt", "a"], "give --prompt or --prompt-file, not both"),
    (["--vote", "k=3"], "--index and --vote take one --prompt"),
    (["--batch", "0"], "--batch must be >= 1"),
])
def test_prompt_file_errors_are_one_line(trained, tmp_path, extra, fragment):
    root, env, ckpt = trained
    file = tmp_path / "prompts.txt"
    file.write_text("a\n", encoding="utf-8")
    result = run(["generate", "--checkpoint", ckpt, "--prompt-file", str(file), *extra], env=env, cwd=root)
    assert_one_line_error(result, fragment)


def test_a_missing_prompt_file_is_one_line(trained, tmp_path):
    root, env, ckpt = trained
    result = run(["generate", "--checkpoint", ckpt, "--prompt-file", str(tmp_path / "none.txt")], env=env, cwd=root)
    assert_one_line_error(result, "cannot read --prompt-file")
