"""encoder.vit's load(): what an image file becomes, and the one-line errors for files it refuses."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from PIL import Image

from apt import AptError, ModelDims
from apt_plugin_vision.image import MAX_PIXELS
from apt_plugin_vision.provider import ViTConfig, ViTProvider


def vit(**options) -> ViTProvider:
    return ViTProvider(ViTConfig(**options))


def test_png_keeps_exact_values_and_normalises(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 128, 250)]
    image = Image.new("RGB", (2, 2))
    image.putdata(colours)
    image.save(tmp_path / "a.png")
    x = vit(image_size=2, patch_size=1, channels=3, mean=0.25, std=0.5).load(tmp_path / "a.png")
    assert x.dtype == torch.float32 and x.shape == (3, 2, 2)
    want = (torch.tensor(colours, dtype=torch.float32).T.reshape(3, 2, 2) / 255 - 0.25) / 0.5
    assert torch.allclose(x, want, atol=1e-6)
    assert x[0, 0, 0].item() == pytest.approx(1.5) and x[1, 0, 0].item() == pytest.approx(-0.5)


def test_jpeg_decodes_close_to_its_colour(tmp_path):
    Image.new("RGB", (16, 16), (200, 100, 50)).save(tmp_path / "a.jpg", quality=95)
    x = vit(channels=3, mean=0.0, std=1.0).load(tmp_path / "a.jpg")
    assert x.shape == (3, 16, 16)
    for channel, value in enumerate((200, 100, 50)):
        assert (x[channel] * 255 - value).abs().max() <= 3


def test_rgb_becomes_grayscale_with_pillows_luma(tmp_path):
    Image.new("RGB", (16, 16), (200, 100, 50)).save(tmp_path / "a.png")
    x = vit(channels=1, mean=0.0, std=1.0).load(tmp_path / "a.png")
    luma = (200 * 299 + 100 * 587 + 50 * 114) / 1000  # ITU-R 601-2, what convert("L") computes
    assert x.shape == (1, 16, 16) and (x * 255 - luma).abs().max() <= 1


def test_grayscale_and_palette_images_become_rgb(tmp_path):
    Image.new("L", (16, 16), 77).save(tmp_path / "gray.png")
    # (0, 204, 0) is in the web palette convert("P") quantises to, so it survives exactly.
    Image.new("RGB", (16, 16), (0, 204, 0)).convert("P").save(tmp_path / "palette.gif")
    gray = vit(channels=3, mean=0.0, std=1.0).load(tmp_path / "gray.png")
    assert gray.shape == (3, 16, 16) and torch.allclose(gray * 255, torch.full((3, 16, 16), 77.0), atol=1e-4)
    palette = vit(channels=3, mean=0.0, std=1.0).load(tmp_path / "palette.gif")
    assert palette.shape == (3, 16, 16) and (palette[1] * 255 - 204).abs().max() <= 1e-3 and palette[0].max() < 0.01


def test_any_size_and_aspect_is_resized_to_the_square(tmp_path):
    image = Image.new("L", (64, 24), 0)
    image.paste(255, (32, 0, 64, 24))  # left half black, right half white
    image.save(tmp_path / "wide.png")
    x = vit(image_size=8, patch_size=4, mean=0.0, std=1.0).load(tmp_path / "wide.png")
    assert x.shape == (1, 8, 8)
    assert torch.all(x[:, :, :3] < 0.01) and torch.all(x[:, :, 5:] > 0.99)
    assert torch.all(x[:, :, 3] <= x[:, :, 4])  # bilinear: a ramp at the edge, not a jump in the wrong place
    Image.new("L", (3, 5), 255).save(tmp_path / "small.png")
    up = vit(image_size=16, mean=0.5, std=0.5).load(tmp_path / "small.png")
    assert up.shape == (1, 16, 16) and torch.allclose(up, torch.ones(1, 16, 16))


def test_loaded_images_stack_into_the_modules_input(tmp_path):
    provider = vit(channels=3, class_token=True)
    for i in range(3):
        Image.new("RGB", (10 + i, 20), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    batch = torch.stack([provider.load(tmp_path / f"{i}.png") for i in range(3)])
    out = provider.build(ModelDims(n_layer=1, n_head=2, d_model=16, block_size=8, vocab_size=5))(batch)
    assert out.shape == (3, provider.tokens(), 16)


def one_line(err: pytest.ExceptionInfo[AptError]) -> str:
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot read image: "), message
    shown = err.value.__cause__ or (None if err.value.__suppress_context__ else err.value.__context__)
    assert shown is None, f"a {type(shown).__name__} from Pillow leaks into the traceback"
    return message


def test_a_missing_file_or_a_directory(tmp_path):
    with pytest.raises(AptError) as err:
        vit().load(tmp_path / "nope.png")
    assert "no such file" in one_line(err)
    with pytest.raises(AptError) as err:
        vit().load(tmp_path)
    assert "is a directory" in one_line(err)


def test_a_text_file_named_png(tmp_path):
    (tmp_path / "fake.png").write_text("this is not an image\n")
    with pytest.raises(AptError) as err:
        vit().load(tmp_path / "fake.png")
    assert "not an image format Pillow can decode" in one_line(err)


def test_an_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(AptError) as err:
        vit().load(tmp_path / "empty.jpg")
    assert "not an image format" in one_line(err)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_truncated_file(tmp_path, fmt):
    noise = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    noise.save(tmp_path / "full", format=fmt)
    data = (tmp_path / "full").read_bytes()
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    with pytest.raises(AptError) as err:
        vit(channels=3).load(tmp_path / "cut")
    assert "truncated or corrupt data" in one_line(err)


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header that claims ``width`` x ``height`` pixels, followed by a few bytes of data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [
    9000,  # 81M pixels: over this encoder's limit, under Pillow's warning
    10000,  # 100M: Pillow warns (made an error here)
    30000,  # 900M: Pillow refuses on its own
])
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    (tmp_path / "bomb.png").write_bytes(png_declaring(side, side))
    assert (tmp_path / "bomb.png").stat().st_size < 200 and side * side > MAX_PIXELS
    with pytest.raises(AptError) as err:
        vit().load(tmp_path / "bomb.png")
    assert "decompression bomb" in one_line(err)


def test_a_large_but_allowed_declared_size_is_not_called_a_bomb(tmp_path):
    (tmp_path / "tall.png").write_bytes(png_declaring(4, 4000))
    with pytest.raises(AptError) as err:  # the data are missing, so it is truncated, not a bomb
        vit().load(tmp_path / "tall.png")
    assert "decompression bomb" not in one_line(err) and "truncated or corrupt data" in str(err.value)
