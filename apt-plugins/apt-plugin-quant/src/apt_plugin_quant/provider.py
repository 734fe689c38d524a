"""The ``quant.int8_dynamic`` and ``quant.bf16`` providers (torch-free at import time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from apt import QuantProvider, option

if TYPE_CHECKING:
    from apt import LanguageModel


@dataclass(frozen=True)
class Int8DynamicConfig:
    per_channel: bool = option(True, doc="one int8 scale per output row of each weight (more accurate) "
                                         "instead of one per matrix")
    head: bool = option(True, doc="also quantise the output head (an int8 copy of the tied token embedding; "
                                  "the embedding lookup itself stays fp32)")


@dataclass(frozen=True)
class BF16Config:
    """bfloat16 has no options: every floating weight and buffer is cast."""


class Int8DynamicProvider(QuantProvider):
    """Dynamic int8 quantisation of every nn.Linear (weights int8, activations quantised per call).

    Modules with an ``inference_form()`` (Tri-Vein attention) are first swapped for it, which puts
    their folded weights in plain nn.Linear layers. Refuses a model with weights it still cannot reach:
    a 2-D weight outside nn.Linear / nn.Embedding / norm layers, or a Linear whose weight its parent
    reads directly instead of calling the layer.
    """

    name = "int8_dynamic"
    Config = Int8DynamicConfig
    #: Quantised kernels run on these device types only (checked by ``QuantProvider.restore`` and ``apt quantize``).
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def apply(self, model: LanguageModel) -> LanguageModel:
        from apt_plugin_quant.quantize import int8_dynamic

        return int8_dynamic(model, per_channel=self.config.per_channel, head=self.config.head)

    def self_test(self) -> str:
        from apt_plugin_quant.quantize import self_test

        return self_test(self)


class BF16Provider(QuantProvider):
    """Cast floating weights and buffers to bfloat16; inference then runs in bfloat16."""

    name = "bf16"
    Config = BF16Config

    def apply(self, model: LanguageModel) -> LanguageModel:
        from apt_plugin_quant.quantize import bf16

        return bf16(model)

    def self_test(self) -> str:
        from apt_plugin_quant.quantize import self_test

        return self_test(self)
