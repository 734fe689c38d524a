"""``apt data prepare digits``: scikit-learn's 1,797 handwritten digits as a captioning corpus.

Real scans small enough (8x8) to train an image-to-text model on a laptop CPU in minutes, and
shipped inside scikit-learn, so preparing them needs no download. The validation split holds
out whole samples, stratified per digit, so every caption is seen in training and accuracy on
``val.jsonl`` measures reading unseen handwriting rather than unseen labels.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from apt import AptError

#: Share of each digit's samples held out for validation.
VAL_FRACTION = 0.2


def prepare(out: Path, *, seed: int) -> dict[str, int]:
    """Write ``images/NNNN.png``, ``train.jsonl`` and ``val.jsonl`` under ``out``; the split depends on ``seed`` only."""
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise AptError("the digits dataset needs scikit-learn: pip install 'apt-plugin-vision[digits]'") from None
    from PIL import Image

    digits = load_digits()
    labels = [int(y) for y in digits.target]
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(digits.images):
        # Ink counts 0..16 scaled to 0..255: white ink on black, as MNIST stores its digits.
        data = bytes(round(float(v) * 255 / 16) for v in pixels.flat)
        Image.frombytes("L", (8, 8), data).save(images / f"{i:04d}.png", format="PNG")
    val = set(split(labels, seed))
    for name, keep in (("train", False), ("val", True)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i, label in enumerate(labels):
                if (i in val) == keep:
                    f.write(json.dumps({"text": f"a handwritten {label}", "image": f"images/{i:04d}.png"}) + "\n")
    return {"train": len(labels) - len(val), "val": len(val)}


def split(labels: list[int], seed: int) -> list[int]:
    """Indices of the validation samples: ``ceil(VAL_FRACTION * n)`` in all, each digit's share rounded by
    largest remainder (as scikit-learn's stratified split sizes it), chosen at random within each digit."""
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    total = math.ceil(VAL_FRACTION * len(labels))
    quotas = {label: VAL_FRACTION * len(members) for label, members in by_label.items()}
    counts = {label: math.floor(q) for label, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda label: (-(quotas[label] - counts[label]), label))
    for label in by_remainder[: total - sum(counts.values())]:
        counts[label] += 1
    rng = random.Random(seed)
    chosen: list[int] = []
    for label in sorted(by_label):
        chosen += rng.sample(by_label[label], counts[label])
    return sorted(chosen)
