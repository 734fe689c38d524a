"""``apt plugin new``: a complete provider package for any kind, passing its own tests as written.

The package follows the layout of the first-party plugins: a pyproject with the entry point and
the ``[tool.apt]`` table the marketplace reads, a torch-free provider module, the module (or
service object) it builds, a README with one example, and tests that run the conformance suite.
Each kind's template is a small working provider, meant to be edited, not filled in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from apt import __version__
from apt.errors import AptError
from apt.providers import KINDS, MODEL_KINDS

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class Names:
    kind: str
    name: str

    @property
    def distribution(self) -> str:
        return f"apt-plugin-{self.name.replace('_', '-')}"

    @property
    def package(self) -> str:
        return f"apt_plugin_{self.name}"

    @property
    def cls(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("_")) + "Provider"

    @property
    def config_cls(self) -> str:
        return self.cls.removesuffix("Provider") + "Config"

    def substitutions(self) -> dict[str, str]:
        major = int(__version__.split(".")[0])
        return {"kind": self.kind, "name": self.name, "distribution": self.distribution, "package": self.package,
                "cls": self.cls, "config_cls": self.config_cls, "base": BASES[self.kind], "core": f">={major}.0.0 <{major + 1}.0.0",
                "core_pip": f"apt-core>={major},<{major + 1}",
                "torch": '"torch>=2.4", ' if self.kind in (*MODEL_KINDS, "encoder", "fusion", "quant") else "",
                "example": EXAMPLES[self.kind].replace("NAME", self.name)}


BASES = {"attention": "AttentionProvider", "ffn": "FFNProvider", "router": "RouterProvider",
         "align": "AlignProvider", "retriever": "RetrieverProvider", "voter": "VoterProvider",
         "quant": "QuantProvider", "tokenizer": "TokenizerProvider", "encoder": "EncoderProvider",
         "fusion": "FusionProvider"}

EXAMPLES = {
    "attention": "apt train -p tiny_debug --set model.attention=NAME",
    "ffn": "apt train -p tiny_debug --set model.ffn=NAME",
    "router": "apt train -p tiny_debug --set model.router=NAME",
    "align": "apt train -p tiny_debug --set model.align=NAME",
    "retriever": "apt plugin info retriever NAME",
    "voter": "apt plugin info voter NAME",
    "quant": "apt plugin info quant NAME",
    "tokenizer": "apt train -p tiny_debug --set data.tokenizer=NAME",
    "encoder": "apt train -p my_profile.yaml --set 'model.encoders={audio: NAME}'",
    "fusion": "apt train -p digits_caption --set model.fusion=NAME",
}

PYPROJECT = """\
[build-system]
requires = ["hatchling>=1.21"]
build-backend = "hatchling.build"

[project]
name = "$distribution"
version = "0.1.0"
description = "$kind.$name provider for APT"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["$core_pip", $torch]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points."apt.providers"]
"$kind.$name" = "$package.provider:$cls"

# Read by apt market pack; what the package provides comes from the entry points above.
[tool.apt]
core = "$core"
sandbox = "allowed"

[tool.hatch.build.targets.wheel]
packages = ["src/$package"]
"""

README = """\
# $distribution

The `$kind.$name` provider for APT.

```bash
pip install -e .            # then: apt plugin info $kind $name
$example
pytest                      # the conformance suite of apt-core (apt.testing)
```

Configure it in a profile under `providers.$kind.$name` (see `apt plugin info $kind $name`);
`apt market pack . && apt market publish $distribution-0.1.0.apx --token KEY` publishes it.
"""

INIT = '''"""The $kind.$name provider for APT."""

__version__ = "0.1.0"
'''

TEST = '''"""The provider conformance suite of apt-core (apt.testing) run against this package."""

from apt.testing import ProviderContract
from $package.provider import $cls


class Test${cls}Contract(ProviderContract):
    provider = $cls
'''

BLOCK_PROVIDER = '''"""The $kind.$name provider (torch-free: the module is imported by ``build``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

$imports

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ${config_cls}:
$config_fields


class $cls($base):
    """$summary"""

    name = "$name"
    Config = ${config_cls}

$check
    def build(self, dims: ModelDims, $build_args) -> nn.Module:
        from $package.module import $module_cls

        return $module_cls(dims, self.config$build_extra)
'''

TEMPLATES: dict[str, dict[str, str]] = {
    "attention": {
        "summary": "Causal multi-head attention with a configurable score scale.",
        "config_fields": '    scale: float = option(1.0, gt=0, le=10, doc="multiplier on the usual 1/sqrt(d_head) score scale")',
        "check": "",
        "build_args": "layer: int", "build_extra": "", "module_cls": "ScaledAttention",
        "module": '''"""The attention module: (B, T, C) -> (B, T, C), causal."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from apt import ModelDims
from torch import nn

if TYPE_CHECKING:
    from $package.provider import ${config_cls}


class ScaledAttention(nn.Module):
    def __init__(self, dims: ModelDims, config: ${config_cls}) -> None:
        super().__init__()
        self.n_head = dims.n_head
        self.scale = config.scale / dims.d_head ** 0.5
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model, bias=dims.bias)
        self.proj = nn.Linear(dims.d_model, dims.d_model, bias=dims.bias)
        self.proj.apt_residual = True  # apt.ResidualOutput: scaled init for residual projections

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))
''',
    },
    "ffn": {
        "summary": "Gated GELU feed-forward block (GEGLU).",
        "config_fields": '    mult: int = option(4, ge=1, le=16, doc="hidden width as a multiple of d_model")',
        "check": '''    def check(self, dims: ModelDims) -> None:
        # A key relative to this config: the kernel reports it as providers.ffn.<name>.mult.
        if self.config.mult * dims.d_model > 1 << 16:
            raise ConfigError("mult", f"gives a hidden width over 65536 for d_model={dims.d_model}")
''',
        "build_args": "layer: int", "build_extra": "", "module_cls": "GatedFFN",
        "module": '''"""The feed-forward module: (B, T, C) -> (B, T, C), position-wise."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from apt import ModelDims
from torch import nn

if TYPE_CHECKING:
    from $package.provider import ${config_cls}


class GatedFFN(nn.Module):
    def __init__(self, dims: ModelDims, config: ${config_cls}) -> None:
        super().__init__()
        hidden = config.mult * dims.d_model
        self.fc = nn.Linear(dims.d_model, 2 * hidden, bias=dims.bias)
        self.proj = nn.Linear(hidden, dims.d_model, bias=dims.bias)
        self.proj.apt_residual = True  # apt.ResidualOutput: scaled init for residual projections

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.proj(value * F.gelu(gate))
''',
    },
    "router": {
        "summary": "Soft mixture of experts: every expert runs, weighted by a softmax gate per token.",
        "config_fields": '    experts: int = option(4, ge=1, le=64, doc="experts per layer, each built by the profile ffn provider")',
        "check": "",
        "build_args": "layer: int, make_ffn: Callable[[], nn.Module]", "build_extra": ", make_ffn",
        "module_cls": "SoftMixture",
        "module": '''"""The router module: (B, T, C) -> (B, T, C), a gated sum of experts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from apt import ModelDims
from torch import nn

if TYPE_CHECKING:
    from $package.provider import ${config_cls}


class SoftMixture(nn.Module):
    def __init__(self, dims: ModelDims, config: ${config_cls}, make_ffn: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.gate = nn.Linear(dims.d_model, config.experts, bias=False)
        self.experts = nn.ModuleList(make_ffn() for _ in range(config.experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.gate(x).softmax(dim=-1)  # (B, T, E)
        outputs = torch.stack([expert(x) for expert in self.experts], dim=-1)  # (B, T, C, E)
        return (outputs * weights.unsqueeze(-2)).sum(dim=-1)
''',
    },
}

ALIGN_PROVIDER = '''"""The align.$name provider and its training hook (torch-free at import time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from apt import AlignProvider, ModelDims, hookimpl, option

if TYPE_CHECKING:
    import torch
    from apt import Output, TrainerView  # Output lives with the model: importing it at run time loads torch
    from torch import nn


@dataclass(frozen=True)
class ${config_cls}:
    weight: float = option(0.01, ge=0, le=10, doc="loss weight when the profile has no ${name}_weight schedule")


class $cls(AlignProvider):
    """Keeps hidden states small: weight * mean squared activation, added before backward."""

    name = "$name"
    Config = ${config_cls}
    switch = "$name"  # schedules.enable_${name}_at_epoch: N turns the loss on at epoch N

    def build(self, dims: ModelDims) -> nn.Module:
        from $package.module import ActivationPenalty

        return ActivationPenalty()

    @hookimpl
    def apt_extra_losses(self, trainer: TrainerView, outputs: Output) -> torch.Tensor | None:
        penalty = trainer.model.extras["align"]
        if not penalty.enabled:
            return None
        weight = trainer.schedule.value("${name}_weight", self.config.weight)
        return weight * penalty(outputs.hidden)
'''

ALIGN_MODULE = '''"""The align module: a penalty on hidden states (B, T, C) -> scalar."""

from __future__ import annotations

import torch
from torch import nn


class ActivationPenalty(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enabled = True  # apt.Switchable: the curriculum sets it

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.float().pow(2).mean()
'''

RETRIEVER_PROVIDER = '''"""The retriever.$name provider (pure Python: nothing heavy to import)."""

from __future__ import annotations

from dataclasses import dataclass

from apt import RetrieverProvider, option

from $package.module import OverlapRetriever


@dataclass(frozen=True)
class ${config_cls}:
    min_overlap: int = option(1, ge=1, le=100, doc="query words a passage must share to be returned")
    template: str = option("{passages}\\n{prompt}", doc="augmented prompt; placeholders {passages} and {prompt}")


class $cls(RetrieverProvider):
    """Word-overlap retrieval: passages ranked by the number of query words they contain."""

    name = "$name"
    Config = ${config_cls}

    def build(self) -> OverlapRetriever:
        return OverlapRetriever(self.config.min_overlap, self.config.template)
'''

RETRIEVER_MODULE = '''"""The retriever service: a JSON index of documents, searched by word overlap."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from apt import AptError, Document, Passage, TextEncoder, atomic_write

FORMAT = "$distribution-index"


def _words(text: str) -> set[str]:
    return set(re.findall(r"\\w+", text.lower()))


class OverlapIndex:
    def __init__(self, documents: list[dict[str, str]], min_overlap: int) -> None:
        self.documents = documents
        self.min_overlap = min_overlap

    def search(self, query: str, k: int) -> list[Passage]:
        words = _words(query)
        scored = [(len(words & _words(d["text"])), i) for i, d in enumerate(self.documents)]
        ranked = sorted((s, -i) for s, i in scored if s >= self.min_overlap)[::-1][:k]
        return [Passage(self.documents[-i]["text"], self.documents[-i]["source"], float(s)) for s, i in ranked]


class OverlapRetriever:
    def __init__(self, min_overlap: int, template: str) -> None:
        self.min_overlap = min_overlap
        self.template = template

    def build_index(self, documents: Iterable[Document], out: Path) -> dict[str, Any]:
        docs = [{"text": d.text, "source": d.source} for d in documents]
        payload = json.dumps({"format": FORMAT, "documents": docs}).encode()
        atomic_write(Path(out), lambda f: f.write(payload))
        return {"format": FORMAT, "documents": len(docs)}

    def open(self, path: Path) -> OverlapIndex:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise AptError(f"cannot open index {path}: {err}; build it with this retriever first") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise AptError(f"{path} is not an index of this retriever (expected format {FORMAT!r})")
        return OverlapIndex(data["documents"], self.min_overlap)

    def augment(self, prompt: str, passages: list[Passage]) -> str:
        if not passages:
            return prompt
        return self.template.format(passages="\\n".join(p.text for p in passages), prompt=prompt)

    def fit(self, prompt: str, passages: list[Passage], tokenizer: TextEncoder, budget: int) -> list[Passage]:
        kept: list[Passage] = []
        for passage in passages:
            candidate = Passage(tokenizer.encodable(passage.text), passage.source, passage.score)
            if len(tokenizer.encode(self.augment(prompt, [*kept, candidate]))) > budget:
                break
            kept.append(candidate)
        return kept
'''

VOTER_PROVIDER = '''"""The voter.$name provider (pure Python: voting is data in, data out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from apt import VoterProvider, option

from $package.module import MajorityVoter


@dataclass(frozen=True)
class ${config_cls}:
    k: int = option(5, ge=1, le=64, doc="samples drawn per question")
    temperature: float = option(0.8, gt=0, le=5, doc="sampling temperature of the K candidates")
    normalise: Literal["exact", "whitespace"] = option("whitespace", doc="what makes two answers agree")
    vote_threshold: float | None = option(None, ge=0, doc="vote only above this next-token entropy (nats)")


class $cls(VoterProvider):
    """Majority vote over K sampled answers; ties go to the higher mean log-probability."""

    name = "$name"
    Config = ${config_cls}
    vote_hook = "$package.module:vote"  # runs in apt-sandbox when the package requires it

    def build(self) -> MajorityVoter:
        c = self.config
        return MajorityVoter(c.k, c.temperature, c.vote_threshold, c.normalise)
'''

VOTER_MODULE = '''"""Voting as pure functions of JSON data, so the kernel can run them in a sandbox."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any


def vote(request: dict[str, Any]) -> dict[str, Any]:
    """``{"candidates", "logprobs", "normalise"}`` -> the winner, its normal form and the counts."""
    candidates: list[str] = list(request["candidates"])
    logprobs: list[float] = list(request.get("logprobs") or [0.0] * len(candidates))
    keys = [c if request.get("normalise") == "exact" else " ".join(c.split()).lower() for c in candidates]
    counts = Counter(keys)
    best = max(counts.values())
    tied = [key for key, n in counts.items() if n == best]
    mean = {key: sum(lp for k, lp in zip(keys, logprobs, strict=True) if k == key) / counts[key] for key in tied}
    winner_key = max(tied, key=lambda key: mean[key])
    return {"winner": candidates[keys.index(winner_key)], "normalised": winner_key,
            "agreement": best / len(candidates), "votes": len(candidates), "counts": dict(counts),
            "tie_broken_by_logprob": len(tied) > 1}


class MajorityVoter:
    def __init__(self, samples: int, temperature: float, threshold: float | None, normalise: str) -> None:
        self.samples = samples
        self.temperature = temperature
        self.threshold = threshold
        self.normalise = normalise

    def request(self, candidates: list[str], logprobs: list[float]) -> dict[str, Any]:
        return {"candidates": candidates, "logprobs": logprobs, "normalise": self.normalise}

    def entropy(self, probs: list[float]) -> float:
        return -sum(p * math.log(p) for p in probs if p > 0)

    def should_vote(self, probs: list[float], threshold: float | None = None) -> bool:
        limit = self.threshold if threshold is None else threshold
        return limit is None or self.entropy(probs) > limit
'''

QUANT_PROVIDER = '''"""The quant.$name provider (torch-free at import time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from apt import QuantProvider, option

if TYPE_CHECKING:
    from apt import LanguageModel


@dataclass(frozen=True)
class ${config_cls}:
    bits: int = option(8, ge=2, le=16, doc="bits per weight on a symmetric per-row grid")


class $cls(QuantProvider):
    """Rounds every Linear weight to a per-row symmetric grid (weights stay float: a size-free model of int-N)."""

    name = "$name"
    Config = ${config_cls}

    def apply(self, model: LanguageModel) -> LanguageModel:
        from $package.module import round_linear_weights

        return round_linear_weights(model, self.config.bits)
'''

QUANT_MODULE = '''"""Weight rounding on a per-row grid: the effect of int-N weights on the model's outputs."""

from __future__ import annotations

import torch
from apt import LanguageModel
from torch import nn


@torch.no_grad()
def round_linear_weights(model: LanguageModel, bits: int) -> LanguageModel:
    levels = 2 ** (bits - 1) - 1
    for module in model.modules():
        if isinstance(module, nn.Linear):
            w = module.weight  # (out, in)
            scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / levels  # (out, 1)
            w.copy_(torch.round(w / scale) * scale)
    return model
'''

TOKENIZER_PROVIDER = '''"""The tokenizer.$name provider (torch-free; its state travels inside every checkpoint)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from apt import TokenizerProvider, option

from $package.module import CharsOverBytes


@dataclass(frozen=True)
class ${config_cls}:
    max_chars: int = option(1000, ge=0, le=1_000_000, doc="most frequent corpus characters given their own token")


class $cls(TokenizerProvider):
    """The corpus's most frequent characters as tokens, any other text as its UTF-8 bytes."""

    name = "$name"
    Config = ${config_cls}

    def build(self, texts: Iterable[str]) -> CharsOverBytes:
        return CharsOverBytes.from_texts(texts, self.config.max_chars)

    def from_state(self, state: dict[str, Any]) -> CharsOverBytes:
        return CharsOverBytes(state["chars"])
'''

TOKENIZER_MODULE = '''"""Characters over a byte fallback: ids 0-255 are UTF-8 bytes, 256 on the learnt characters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

BYTES = 256


class CharsOverBytes:
    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.ids = {c: BYTES + i for i, c in enumerate(chars)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_chars: int) -> CharsOverBytes:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        frequent = sorted(counts, key=lambda c: (-counts[c], c))[:max_chars]
        return cls("".join(sorted(frequent)))

    @property
    def vocab_size(self) -> int:
        return BYTES + len(self.chars)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for c in text:
            known = self.ids.get(c)
            ids.extend([known] if known is not None else c.encode("utf-8"))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        out = bytearray()
        for i in ids:
            out.extend(self.chars[i - BYTES].encode("utf-8") if i >= BYTES else bytes([i]))
        return out.decode("utf-8", errors="replace")

    def encodable(self, text: str) -> str:
        return text

    def state(self) -> dict[str, Any]:
        return {"kind": "$name", "chars": self.chars}
'''

ENCODER_PROVIDER = '''"""The encoder.$name provider (torch-free: ``load`` and ``build`` import the module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from apt import EncoderProvider, ModelDims, option

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class ${config_cls}:
    frames: int = option(16, ge=1, le=4096, doc="frames a clip is cut or padded to; one token each")
    frame_samples: int = option(400, ge=1, le=65536, doc="samples per frame")


class $cls(EncoderProvider):
    """Mono 16-bit WAV clips, one feature vector per frame of samples (records' ``audio`` key)."""

    name = "$name"
    modality = "audio"
    Config = ${config_cls}

    def tokens(self) -> int:
        return int(self.config.frames)

    def load(self, path: Path) -> torch.Tensor:
        from $package.module import read_frames

        return read_frames(path, self.config.frames, self.config.frame_samples)

    def build(self, dims: ModelDims) -> nn.Module:
        from $package.module import FrameEncoder

        return FrameEncoder(self.config.frames, self.config.frame_samples, dims.d_model)
'''

ENCODER_MODULE = '''"""The encoder module, and the WAV reader that feeds it."""

from __future__ import annotations

import wave
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from apt import AptError


def read_frames(path: Path, frames: int, frame_samples: int) -> torch.Tensor:
    """(frames, frame_samples) floats in [-1, 1]; never reads more than that many samples."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise AptError("cannot read audio: expected 16-bit mono PCM WAV")
            raw = w.readframes(frames * frame_samples)
    except (wave.Error, EOFError, OSError) as err:
        raise AptError(f"cannot read audio: {err}") from None
    x = torch.frombuffer(bytearray(raw), dtype=torch.int16).float() / 32768
    return F.pad(x, (0, frames * frame_samples - x.numel())).view(frames, frame_samples)


class FrameEncoder(nn.Module):
    def __init__(self, frames: int, frame_samples: int, width: int) -> None:
        super().__init__()
        self.n_tokens, self.d_out = frames, width
        self.proj = nn.Linear(frame_samples, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(x))  # (M, frames, frame_samples) -> (M, frames, width)
'''

ENCODER_TEST = '''"""The provider conformance suite of apt-core (apt.testing) run against this package."""

import math
import struct
import wave

import pytest

from apt.testing import ProviderContract
from $package.provider import $cls


class Test${cls}Contract(ProviderContract):
    provider = $cls

    @pytest.fixture
    def media_sample(self, tmp_path):
        path = tmp_path / "tone.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 5))) for i in range(4000)))
        return path
'''

FUSION_PROVIDER = '''"""The fusion.$name provider (torch-free: ``build`` imports the module)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from apt import FusionProvider, ModelDims, option

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ${config_cls}:
    scale: float = option(1.0, ge=0.0, le=10.0, doc="weight of the media summary added to each token")


class $cls(FusionProvider):
    """Adds each row's mean media feature, projected, to every token embedding of that row."""

    name = "$name"
    Config = ${config_cls}

    def slots(self, modality: str, n_tokens: int) -> int:
        return 0

    def build(self, dims: ModelDims, encoders: dict[str, tuple[int, int]]) -> nn.Module:
        from $package.module import MeanFusion

        return MeanFusion(dims.d_model, encoders, self.config.scale)
'''

FUSION_MODULE = '''"""The fusion module (apt.Fusion): media summaries added to the token embeddings."""

from __future__ import annotations

import torch
from torch import nn

from apt import Media


class MeanFusion(nn.Module):
    def __init__(self, d_model: int, encoders: dict[str, tuple[int, int]], scale: float) -> None:
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Linear(d_out, d_model) for m, (_, d_out) in encoders.items()})
        self.scale = scale

    def inject(self, embeddings: torch.Tensor, media: Media) -> torch.Tensor:
        for modality, features in media.features.items():
            pooled = self.proj[modality](features.mean(dim=1)).to(embeddings.dtype)  # (M, C)
            added = self.scale * pooled[:, None, :].expand(-1, embeddings.shape[1], -1)  # (M, T, C)
            embeddings = embeddings.index_add(0, media.rows[modality], added)
        return embeddings

    def after_block(self, layer: int, x: torch.Tensor, media: Media) -> torch.Tensor:
        return x
'''

SERVICES = {
    "encoder": (ENCODER_PROVIDER, ENCODER_MODULE),
    "fusion": (FUSION_PROVIDER, FUSION_MODULE),
    "align": (ALIGN_PROVIDER, ALIGN_MODULE),
    "retriever": (RETRIEVER_PROVIDER, RETRIEVER_MODULE),
    "voter": (VOTER_PROVIDER, VOTER_MODULE),
    "quant": (QUANT_PROVIDER, QUANT_MODULE),
    "tokenizer": (TOKENIZER_PROVIDER, TOKENIZER_MODULE),
}


def render(kind: str, name: str) -> dict[str, str]:
    """The files of a new provider package, by path relative to its folder."""
    if kind not in KINDS:
        raise AptError(f"unknown provider kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not _NAME.match(name):
        raise AptError(f"provider name {name!r} must be a lower-case identifier (a-z, 0-9, _; starting "
                       f"with a letter, at most 40 characters), e.g. geglu")
    names = Names(kind, name)
    subs = names.substitutions()
    if kind in TEMPLATES:
        parts = TEMPLATES[kind]
        provider_subs = {**subs, **parts, "imports": "from apt import " + ", ".join(sorted(
            {parts.get("base", subs["base"]), "ModelDims", "option"} | ({"ConfigError"} if parts["check"] else set())))}
        provider = Template(BLOCK_PROVIDER).substitute(provider_subs)
        if kind == "router":
            provider = provider.replace("from dataclasses import dataclass\n",
                                        "from collections.abc import Callable\nfrom dataclasses import dataclass\n")
        module = Template(parts["module"]).substitute(subs)
    else:
        provider_text, module_text = SERVICES[kind]
        provider, module = Template(provider_text).substitute(subs), Template(module_text).substitute(subs)
    package = f"src/{names.package}"
    return {
        "pyproject.toml": Template(PYPROJECT).substitute(subs).replace(", ]", "]"),
        "README.md": Template(README).substitute(subs),
        f"{package}/__init__.py": Template(INIT).substitute(subs),
        f"{package}/provider.py": provider,
        f"{package}/module.py": module,
        f"{package}/py.typed": "",
        "tests/test_contract.py": Template(ENCODER_TEST if kind == "encoder" else TEST).substitute(subs),
    }


def write(kind: str, name: str, folder: Path) -> list[Path]:
    """Write the package into ``folder`` (new or empty); returns the files written."""
    files = render(kind, name)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise AptError(f"{folder} already exists and is not an empty directory; choose a new --dir")
    written = []
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
