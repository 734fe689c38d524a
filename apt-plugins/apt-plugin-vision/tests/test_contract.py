"""The provider conformance suite of apt-core, run against encoder.vit as configured by default and for RGB."""

import pytest
from PIL import Image

from apt.testing import ProviderContract
from apt_plugin_vision.provider import ViTProvider


@pytest.fixture
def digit_png(tmp_path):
    """An 8x8 grayscale image with a vertical stroke, as `apt data prepare digits` writes them."""
    image = Image.new("L", (8, 8), 0)
    for y in range(1, 7):
        image.putpixel((4, y), 255)
    path = tmp_path / "seven.png"
    image.save(path)
    return path


class TestViTContract(ProviderContract):
    provider = ViTProvider

    @pytest.fixture
    def media_sample(self, digit_png):
        return digit_png


class TestViTWithClassTokenContract(ProviderContract):
    provider = ViTProvider

    @pytest.fixture
    def media_sample(self, digit_png):
        return digit_png

    @pytest.fixture
    def provider_options(self):
        return {"image_size": 12, "patch_size": 3, "channels": 3, "class_token": True, "layout": "clip",
                "activation": "quick_gelu"}
