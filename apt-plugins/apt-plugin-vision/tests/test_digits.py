"""The digits dataset: every scan written once, split stratified and reproducibly, usable by encoder.vit."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest
import torch
from PIL import Image

from apt import AptError
from apt_plugin_vision.digits import prepare, split
from apt_plugin_vision.provider import ViTConfig, ViTProvider

pytest.importorskip("sklearn")


def records(folder, name):
    return [json.loads(line) for line in (folder / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    return out, prepare(out, seed=0)


def test_counts_files_and_records(digits):
    out, counts = digits
    assert counts == {"train": 1437, "val": 360}
    train, val = records(out, "train"), records(out, "val")
    assert len(train) == 1437 and len(val) == 360
    assert len(list((out / "images").glob("*.png"))) == 1797
    for record in train + val:
        assert set(record) == {"text", "image"}
        assert record["text"].startswith("a handwritten ") and record["text"][-1] in "0123456789"
        assert (out / record["image"]).is_file()
    assert {"text": "a handwritten 7", "image": "images/0007.png"} in train + val


def test_pngs_are_the_scikit_learn_scans(digits):
    from sklearn.datasets import load_digits

    out, _ = digits
    source = load_digits()
    for i in (0, 7, 1796):
        with Image.open(out / "images" / f"{i:04d}.png") as image:
            assert image.size == (8, 8) and image.mode == "L"
            pixels = torch.tensor(list(image.tobytes()), dtype=torch.float32).view(8, 8)
        want = torch.tensor(source.images[i], dtype=torch.float32) * 255 / 16
        assert (pixels - want).abs().max() <= 0.5
    label = {r["image"]: r["text"] for r in records(out, "train") + records(out, "val")}
    assert label["images/0007.png"] == f"a handwritten {int(source.target[7])}"


def test_split_is_disjoint_and_stratified(digits):
    out, _ = digits
    train, val = records(out, "train"), records(out, "val")
    assert not {r["image"] for r in train} & {r["image"] for r in val}
    per_digit_val, per_digit_all = Counter(r["text"] for r in val), Counter(r["text"] for r in train + val)
    assert len(per_digit_val) == 10
    for text, n in per_digit_all.items():
        assert abs(per_digit_val[text] - 0.2 * n) < 1, (text, per_digit_val[text], n)


def test_the_split_depends_on_the_seed_only(tmp_path, digits):
    out, _ = digits
    again = prepare(tmp_path / "again", seed=0)
    assert again == {"train": 1437, "val": 360}
    for name in ("train", "val"):
        assert (tmp_path / "again" / f"{name}.jsonl").read_bytes() == (out / f"{name}.jsonl").read_bytes()
    assert (tmp_path / "again" / "images" / "0123.png").read_bytes() == (out / "images" / "0123.png").read_bytes()
    labels = [i % 10 for i in range(1797)]
    assert split(labels, 0) == split(labels, 0) != split(labels, 1)


def test_the_images_load_through_the_encoder(digits):
    out, _ = digits
    provider = ViTProvider(ViTConfig(image_size=8, patch_size=2))
    x = provider.load(out / "images" / "0000.png")
    assert x.shape == (1, 8, 8) and x.min() >= -1 and x.max() <= 1 and x.std() > 0.1


def test_without_scikit_learn_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(AptError, match=r"the digits dataset needs scikit-learn: pip install "
                                       r"'apt-plugin-vision\[digits\]'"):
        prepare(tmp_path, seed=0)
