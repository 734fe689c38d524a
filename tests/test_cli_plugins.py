"""Provider discovery through the CLI: listing, info, fallback when tva is absent, broken plugins."""

import json

from apt.testing import make_distribution
from core_cli import SMALL, assert_one_line_error, run

FALLBACK = ("apt: warning: no attention provider named 'tva' is installed (pip install apt-plugin-tva); "
            "falling back to attention provider 'sdpa'")


def test_list_and_info_show_versions_defaults_and_config(tmp_path, env):
    listed = run(["plugin", "list", "--json"], env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    records = {f"{r['kind']}.{r['name']}": r for r in json.loads(listed.stdout)}
    tva = records["attention.tva"]
    assert (tva["distribution"], tva["version"], tva["default"], tva["status"]) == ("apt-plugin-tva", "2.0.0", True, "ok")
    assert {c["name"]: c["default"] for c in tva["config"]} == {"r": 4, "s": 1, "tau": 0.18, "kernel_dim": None}
    assert records["attention.sdpa"]["distribution"] == "apt-core"

    table = run(["plugin-list", "--kind", "ffn"], env=env, cwd=tmp_path)
    assert table.stdout.splitlines()[0].split() == ["KIND", "NAME", "VERSION", "DISTRIBUTION", "DEFAULT", "STATUS", "CONFIG"]
    assert table.stdout.splitlines()[1].split()[:6] == ["ffn", "dense", "2.0.0", "apt-core", "yes", "ok"]

    info = run(["plugin-info", "attention", "tva"], env=env, cwd=tmp_path)
    assert info.returncode == 0
    assert "attention.tva  apt-plugin-tva 2.0.0  (default)" in info.stdout
    assert "  tau: float = 0.18  relative off-plane error" in info.stdout
    missing = run(["plugin", "info", "attention", "nope"], env=env, cwd=tmp_path)
    assert_one_line_error(missing, "no attention provider named 'nope' is installed (installed: ")
    assert "sdpa, tva); see apt plugin list" in missing.stderr


def test_broken_plugin_is_reported_and_falls_back(tmp_path, env):
    marker = tmp_path / "imported"
    site = make_distribution(tmp_path / "site", "apt-plugin-broken", "0.1.0",
                             entry_points={"apt.providers": {"attention.broken": "broken_attn:Provider"}},
                             modules={"broken_attn.py": f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                                        "import does_not_exist_anywhere\n"})
    env["PYTHONPATH"] = str(site)
    untrusted = run(["plugin", "list"], env=env, cwd=tmp_path)
    assert untrusted.returncode == 0
    assert "untrusted: not imported here: apt-plugin-broken runs only inside apt-sandbox" in untrusted.stdout
    assert not marker.exists(), "listing imported an untrusted distribution's code"
    assert run(["market", "trust", "apt-plugin-broken"], env=env, cwd=tmp_path).returncode == 0
    listed = run(["plugin", "list"], env=env, cwd=tmp_path)
    assert marker.exists()
    assert listed.returncode == 0
    line = next(row for row in listed.stdout.splitlines() if row.startswith("attention  broken"))
    assert "broken: attention.broken from apt-plugin-broken is broken: cannot import broken_attn:Provider: " \
           "ModuleNotFoundError: No module named 'does_not_exist_anywhere'" in line
    assert any(row.startswith("attention  tva") and " ok " in row for row in listed.stdout.splitlines())
    info = run(["plugin", "info", "attention", "broken"], env=env, cwd=tmp_path)
    assert info.returncode == 1 and "status: broken" in info.stdout

    trained = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=2", "--set", "model.attention=broken"],
                  env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    warnings = [line for line in trained.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "No module named 'does_not_exist_anywhere'" in warnings[0]
    assert "falling back to attention provider 'sdpa'" in warnings[0]
    strict = run(["train", "-p", "tiny_debug", "--set", "model.attention=broken", "--strict",
                  "--set", "checkpoint.dir=runs/strict"], env=env, cwd=tmp_path)
    assert_one_line_error(strict, "--strict forbids falling back")


def test_without_plugins_training_falls_back_with_one_warning_each(tmp_path, env, venv_without_plugins):
    listed = run(["plugin", "list"], env=env, cwd=tmp_path, python=venv_without_plugins)
    assert listed.returncode == 0
    core = [["attention", "sdpa"], ["ffn", "dense"], ["fusion", "prefix"], ["fusion", "xattn"], ["tokenizer", "byte"],
            ["tokenizer", "char"]]
    assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == core
    trained = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=3"], env=env, cwd=tmp_path,
                  python=venv_without_plugins)
    assert trained.returncode == 0, trained.stderr
    assert trained.stderr.splitlines() == [FALLBACK]
    assert "attention sdpa" in trained.stdout
    run_dir = str(tmp_path / "runs" / "tiny_debug")
    voted = run(["generate", "--checkpoint", run_dir, "--vote", "k=3"], env=env, cwd=tmp_path,
                python=venv_without_plugins)
    assert_one_line_error(voted, "no voter provider named 'self_consistency' is installed (pip install apt-plugin-voter)")
    retrieved = run(["generate", "--checkpoint", run_dir, "--index", "docs.idx"], env=env, cwd=tmp_path,
                    python=venv_without_plugins)
    assert_one_line_error(retrieved, "no retriever provider named 'bm25' is installed (pip install apt-plugin-retriever)")
    quantize = run(["quantize", "--checkpoint", run_dir], env=env, cwd=tmp_path, python=venv_without_plugins)
    assert_one_line_error(quantize, "'apt quantize' comes with apt-plugin-quant: pip install apt-plugin-quant")
    strict = run(["train", "-p", "tiny_debug", "--strict", "--set", "checkpoint.dir=runs/strict"], env=env, cwd=tmp_path,
                 python=venv_without_plugins)
    assert_one_line_error(strict, "no attention provider named 'tva' is installed (pip install apt-plugin-tva)")

    moe = run(["train", "-p", "moe_reasoning_small", *SMALL, "--set", "train.max_iters=2", "--set", "train.epoch_iters=1"],
              env=env, cwd=tmp_path, python=venv_without_plugins)
    assert moe.returncode == 0, moe.stderr
    assert moe.stderr.splitlines() == [
        FALLBACK,
        "apt: warning: no router provider named 'topk_moe' is installed (pip install apt-plugin-moe); "
        "continuing without one (router is optional)",
        "apt: warning: no align provider named 'bistate' is installed (pip install apt-plugin-align); "
        "continuing without one (align is optional)"]
    strict = run(["train", "-p", "moe_reasoning_small", "--set", "model.attention=sdpa", "--strict",
                  "--set", "checkpoint.dir=runs/strict_moe"], env=env, cwd=tmp_path, python=venv_without_plugins)
    assert_one_line_error(strict, "no router provider named 'topk_moe' is installed (pip install apt-plugin-moe)")
