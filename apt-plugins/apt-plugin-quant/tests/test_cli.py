"""``apt quantize`` and ``apt export`` the way a user runs them, on one tiny trained checkpoint."""

import json
import os

import numpy as np
import pytest
import torch

from core_cli import SMALL, assert_one_line_error, run, serving

HELD_OUT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e["APT_HOME"] = str(tmp_path_factory.mktemp("apt_home"))
    e["PYTHONUNBUFFERED"] = "1"
    e.pop("PYTHONPATH", None)
    return e


@pytest.fixture(scope="module")
def work(tmp_path_factory, env):
    """A directory holding run/ (a tiny sdpa model trained for 30 steps) and held_out.txt."""
    root = tmp_path_factory.mktemp("quant")
    trained = run(["train", "-p", "tiny_debug", *SMALL, "--set", "model.attention=sdpa", "--set", "train.max_iters=30",
                   "--set", "train.eval_interval=30", "--set", f"checkpoint.dir={root / 'run'}"], env=env, cwd=root)
    assert trained.returncode == 0, trained.stderr
    (root / "held_out.txt").write_text(HELD_OUT)
    return root


@pytest.fixture(scope="module")
def int8_dir(work, env):
    result = run(["quantize", "--checkpoint", "run", "--method", "int8_dynamic", "--out", "int8",
                  "--eval-data", "held_out.txt", "--speed-rounds", "2", "--speed-tokens", "8"], env=env, cwd=work)
    assert result.returncode == 0, result.stderr
    return work / "int8", result


def test_quantize_reports_size_speed_and_perplexity(int8_dir):
    out, result = int8_dir
    lines = result.stdout.splitlines()
    assert lines[0].startswith("quantised run/checkpoints/best.pt with quant.int8_dynamic -> int8/model.pt")
    assert lines[1].startswith("size:  float ") and " bytes -> int8_dynamic " in lines[1]
    assert "tokens/s -> int8_dynamic" in lines[2] and "median of 2 interleaved rounds" in lines[2]
    assert lines[3].startswith("eval:  loss ") and "perplexity" in lines[3] and "held_out.txt" in lines[3]
    assert result.stderr == ""
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "int8_dynamic" and report["options"] == {"per_channel": True, "head": True}
    size = report["size"]
    assert size["quantized_bytes"] == (out / "model.pt").stat().st_size and size["ratio"] < 0.8
    assert set(report["speed"]["median_tokens_per_s"]) == {"float", "int8_dynamic"}
    assert abs(report["eval"]["loss_change"]) < 0.05 and report["eval"]["before"]["tokens"] == len(HELD_OUT) - 1
    assert report["reload_max_abs_logit_diff"] == 0.0


def test_generate_and_eval_load_the_quantised_directory(int8_dir, work, env):
    out, _ = int8_dir
    sample = run(["generate", "--checkpoint", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "12"],
                 env=env, cwd=work)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("ROMEO:") and len(sample.stdout.splitlines()[0]) >= len("ROMEO:")
    assert "Warning" not in sample.stderr, sample.stderr
    scored = run(["eval", "--checkpoint", str(out), "--data", "held_out.txt", "--json"], env=env, cwd=work)
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    report = json.loads((out / "report.json").read_text())
    assert result["checkpoint"].endswith("int8/model.pt")
    assert abs(result["loss"] - report["eval"]["after"]["loss"]) < 1e-5


def test_apt_serve_answers_from_the_quantised_directory_as_generate_does(int8_dir, work, env):
    pytest.importorskip("fastapi")
    import httpx

    out, _ = int8_dir
    greedy = run(["generate", "--checkpoint", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "12",
                  "--temperature", "0", "--json"], env=env, cwd=work)
    assert greedy.returncode == 0, greedy.stderr
    with serving(["--checkpoint", str(out)], env=env, cwd=work) as (base, _):
        answer = httpx.post(f"{base}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 12, "temperature": 0},
                            timeout=120).json()
    assert answer["choices"][0]["text"] == json.loads(greedy.stdout)["text"]


def test_bf16_quantize_without_eval_data(work, env):
    result = run(["quantize", "--checkpoint", "run", "--method", "bf16", "--out", "bf16", "--speed-rounds", "0"],
                 env=env, cwd=work)
    assert result.returncode == 0, result.stderr
    assert "speed: skipped" in result.stdout
    assert "eval:  skipped: no --eval-data given" in result.stdout
    assert json.loads((work / "bf16" / "report.json").read_text())["size"]["ratio"] < 0.6


def _float_model(work):
    from apt.checkpoint import load_model

    return load_model(work / "run").model


@pytest.mark.parametrize("fmt, name", [("safetensors", "model.safetensors"), ("torch-export", "model.pt2"),
                                       ("onnx", "model.onnx")])
def test_export_reloads_outside_apt_and_matches(work, env, fmt, name):
    result = run(["export", "--checkpoint", "run", "--format", fmt, "--out", f"exported/{name}"], env=env, cwd=work)
    assert result.returncode == 0, result.stderr
    assert "verified: reloaded with" in result.stdout and "max abs logit diff" in result.stdout
    assert "torchvision" not in result.stderr and "[torch.onnx]" not in result.stdout
    path = work / "exported" / name
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    model = _float_model(work)
    x = torch.randint(0, model.dims.vocab_size, (5, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x).logits
    if fmt == "safetensors":
        from safetensors import safe_open

        from apt_plugin_quant.export import load_safetensors

        with safe_open(str(path), framework="pt") as f:
            meta, names = f.metadata(), set(f.keys())
        assert len(names & {"tok_emb.weight", "lm_head.weight"}) == 1, "the tied head is stored once"
        assert json.loads(meta["profile"])["model"]["d_model"] == 32 and meta["format"] == "apt-safetensors"
        rebuilt, tokenizer = load_safetensors(path)
        with torch.no_grad():
            got = rebuilt(x).logits
        assert tokenizer.vocab_size == rebuilt.dims.vocab_size
    elif fmt == "torch-export":
        with torch.no_grad():
            got = torch.export.load(str(path)).module()(x)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"idx": x.numpy()})[0])
        assert not list(path.parent.glob("*.data")), "single file, no external data"
    assert got.shape == ref.shape == (5, 16, ref.shape[-1])
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-4)


def test_bad_input_gives_one_line_and_exit_2(work, env, int8_dir, tmp_path):
    assert_one_line_error(run(["export", "--checkpoint", "run", "--format", "tflite", "--out", "m.tflite"],
                              env=env, cwd=work), "invalid choice: 'tflite' (choose from 'safetensors', ")
    assert_one_line_error(run(["quantize", "--checkpoint", "nope", "--method", "bf16", "--out", "q"], env=env,
                              cwd=work), "checkpoint 'nope' not found")
    assert_one_line_error(run(["export", "--checkpoint", "int8", "--format", "torch-export", "--out", "q.pt2"],
                              env=env, cwd=work), "exports float models only and int8/model.pt is quantised")

    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    without_ort = {**env, "PYTHONPATH": str(shadow.parent)}
    assert_one_line_error(run(["export", "--checkpoint", "run", "--format", "onnx", "--out", "m.onnx"],
                              env=without_ort, cwd=work),
                          "(onnxruntime is not installed): pip install 'apt-plugin-quant[onnx]'")


def test_unsupported_layer_is_refused_with_the_module_named(work, env):
    pytest.importorskip("apt_plugin_moe")
    from apt import checkpoint as ckpt
    from apt.model import ModelBuilder
    from apt.profile import load_profile
    from apt.tokenizers import CharTokenizer

    profile = load_profile("tiny_debug", ["model.n_layer=1", "model.d_model=32", "model.block_size=16",
                                          "model.router=topk_moe", "providers.router.topk_moe.experts=2",
                                          "providers.router.topk_moe.top_k=1"])
    tokenizer = CharTokenizer("".join(sorted(set(HELD_OUT))))
    built = ModelBuilder(profile, tokenizer.vocab_size).build()
    ckpt.save(work / "moe_run", {"step": 1, "profile": profile.to_dict(), "providers": built.providers,
                                 "tokenizer": tokenizer.state(), "model": built.model.state_dict()}, keep_last=1)
    result = run(["quantize", "--checkpoint", "moe_run", "--method", "int8_dynamic", "--out", "moe_int8"],
                 env=env, cwd=work)
    assert_one_line_error(result, "cannot reach blocks.0.mlp.router (Linear)")
    assert "use --method bf16 instead" in result.stderr and not (work / "moe_int8").exists()


def test_tri_vein_model_quantises_to_int8_and_generates(work, env):
    pytest.importorskip("apt_plugin_tva")
    trained = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=20", "--set",
                   "train.eval_interval=20", "--set", f"checkpoint.dir={work / 'tva_run'}"], env=env, cwd=work)
    assert trained.returncode == 0, trained.stderr
    result = run(["quantize", "--checkpoint", "tva_run", "--method", "int8_dynamic", "--out", "tva_int8",
                  "--eval-data", "held_out.txt", "--speed-rounds", "0"], env=env, cwd=work)
    assert result.returncode == 0, result.stderr
    report = json.loads((work / "tva_int8" / "report.json").read_text())
    assert report["size"]["ratio"] < 0.8 and report["reload_max_abs_logit_diff"] == 0.0
    assert abs(report["eval"]["loss_change"]) < 0.05
    sample = run(["generate", "--checkpoint", "tva_int8", "--prompt", "ROMEO:", "--max-new-tokens", "12"],
                 env=env, cwd=work)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("ROMEO:") and "Warning" not in sample.stderr, sample.stderr
