"""Image files -> the fixed-shape, normalised tensors the ViT takes.

Training data comes from whoever wrote the JSONL, so every file is untrusted: its declared size
is checked before any pixel is decoded (a few hundred bytes of PNG can claim gigapixels), and
every failure of Pillow's many decoders becomes one :class:`apt.AptError` line the data loader
can prefix with the record it came from, instead of a traceback from deep inside a plugin.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING

from apt import AptError

if TYPE_CHECKING:
    import torch

#: Largest image decoded (width x height). Far above any photo a ViT is fed, far below what would
#: exhaust memory: a larger declared size is treated as a decompression bomb.
MAX_PIXELS = 64 * 1024 * 1024


def load_image(path: Path, *, size: int, channels: int, mean: float, std: float) -> torch.Tensor:
    """The image at ``path`` as a ``(channels, size, size)`` float tensor, ``(x - mean) / std`` with x in [0, 1].

    Messages leave the path out: every caller in the core already prefixes the record and file.
    """
    try:
        with open(path, "rb") as fp:
            return decode(fp, size=size, channels=channels, mean=mean, std=std)
    except FileNotFoundError:
        raise AptError("cannot read image: no such file") from None
    except IsADirectoryError:
        raise AptError("cannot read image: it is a directory") from None
    except PermissionError:
        raise AptError("cannot read image: permission denied") from None
    except OSError as err:
        raise AptError(f"cannot read image: {_first_line(err)}") from None


def decode(fp: IO[bytes], *, size: int, channels: int, mean: float, std: float) -> torch.Tensor:
    """``fp`` decoded as :func:`load_image` decodes a file; errors are :class:`apt.AptError` without the path."""
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; here a bomb is always an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as opened:  # reads the header only: nothing is decoded yet
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise AptError(f"cannot read image: decompression bomb: it declares {width}x{height} = "
                                   f"{width * height:,} pixels, over the limit of {MAX_PIXELS:,}")
                opened.load()
                upright = ImageOps.exif_transpose(opened)  # photos are stored sideways with a rotation tag
                image = upright.convert("L" if channels == 1 else "RGB")
                data = image.resize((size, size), Image.Resampling.BILINEAR).tobytes()
    except AptError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise AptError(f"cannot read image: decompression bomb: {_first_line(err)}") from None
    except UnidentifiedImageError:
        raise AptError("cannot read image: not an image format Pillow can decode") from None
    except OSError as err:
        # Pillow reports a file cut short or corrupt data as OSError ("image file is truncated", "broken data stream").
        raise AptError(f"cannot read image: truncated or corrupt data: {_first_line(err)}") from None
    except (ValueError, TypeError, SyntaxError, IndexError, struct.error, EOFError, MemoryError) as err:
        # Pillow's format plugins raise these on malformed headers; none of them is a bug of the caller.
        raise AptError(f"cannot read image: malformed file: {type(err).__name__}: {_first_line(err)}") from None
    pixels = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # (size * size * C,) row-major, interleaved
    x = pixels.view(size, size, channels).permute(2, 0, 1).float() / 255.0  # (C, size, size) in [0, 1]
    return (x - mean) / std


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
