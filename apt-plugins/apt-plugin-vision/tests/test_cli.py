"""The way a user meets the plugin: apt data prepare digits, then apt train with model.encoders {image: vit}."""

from __future__ import annotations

import json

import pytest
import torch

from core_cli import SMALL, assert_one_line_error, run

pytest.importorskip("sklearn")


def train_args(root, *extra):
    return ["train", "-p", "tiny_debug", *SMALL, "--set", "model.attention=sdpa", "--set", "model.block_size=40",
            "--set", "model.encoders={image: vit}", "--set", "train.max_iters=3", "--set", "train.eval_interval=3",
            "--set", f"data.train_path={root / 'data' / 'train.jsonl'}",
            "--set", f"data.val_path={root / 'data' / 'val.jsonl'}", "--set", "data.prepare=digits",
            "--set", "providers.encoder.vit.image_size=8", "--set", "providers.encoder.vit.patch_size=2",
            "--set", "providers.encoder.vit.layers=1", "--set", f"checkpoint.dir={root / 'run'}", *extra]


def test_prepare_then_train_a_captioner(tmp_path, apt_env):
    prepared = run(["data", "prepare", "digits", "--out", "data", "--json"], env=apt_env, cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    assert json.loads(prepared.stdout) == {"dataset": "digits", "out": "data", "train": 1437, "val": 360}
    trained = run(train_args(tmp_path), env=apt_env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "encoder.image vit" in trained.stdout + trained.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    vit_keys = [k for k in state["model"] if ".vit." in k or "encoders.image." in k]
    assert any(k.endswith("patch.weight") for k in vit_keys), sorted(state["model"])[:20]


def test_a_missing_corpus_says_how_to_prepare_it(tmp_path, apt_env):
    missing = run(train_args(tmp_path), env=apt_env, cwd=tmp_path)
    assert_one_line_error(missing, f"build it with: apt data prepare digits --out {tmp_path / 'data'}",
                          code=missing.returncode)


def test_a_pretrained_tower_that_does_not_fit_is_one_line(tmp_path, apt_env):
    transformers = pytest.importorskip("transformers")
    prepared = run(["data", "prepare", "digits", "--out", "data"], env=apt_env, cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=4, num_channels=1)).save_pretrained(tmp_path / "tower")
    wrong = run(train_args(tmp_path, "--set", f"providers.encoder.vit.pretrained={tmp_path / 'tower'}"), env=apt_env,
                cwd=tmp_path)
    assert_one_line_error(wrong, f"providers.encoder.vit.image_size: the pretrained model in {tmp_path / 'tower'} "
                                 f"expects 16, got 8: set providers.encoder.vit.image_size: 16, patch_size: 4, "
                                 f"activation: gelu_tanh, mlp_mult: 2", code=wrong.returncode)
