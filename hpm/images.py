"""Images in and out, one guarded path for every entry point (the app, ``hpm predict``, ``hpm attack``).

Uploads are decoded with limits on file size, dimensions and pixel count checked before the pixels are,
and any PIL mode is converted to 8-bit RGB; tensors are images in [0, 1] at the model's input size.
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError
import torch
from torch import Tensor

from .errors import HPMError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # larger files are refused before decoding
MAX_PIXELS = 40_000_000  # decompression-bomb guard (width * height)
MAX_SIDE = 12_000  # longest side accepted
SOURCE_MODE = "hpm_source_mode"  # Image.info key: the PIL mode an image had before open_image made it RGB
MODE_NAMES = {"L": "greyscale", "LA": "greyscale with alpha", "1": "black-and-white", "P": "palette",
              "RGBA": "RGB with alpha", "CMYK": "CMYK", "I;16": "16-bit greyscale", "I": "32-bit greyscale",
              "F": "float greyscale", "YCbCr": "YCbCr", "PA": "palette with alpha"}


def open_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Decode an upload safely to an 8-bit RGB image (first frame, EXIF orientation applied).

    Raises:
        HPMError: empty, oversized, corrupt or non-image data, decompression bombs, absurd dimensions.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        data = source if isinstance(source, bytes) else _read_bytes(Path(source))
        if len(data) == 0:
            raise HPMError("the file is empty (0 bytes)")
        if len(data) > MAX_UPLOAD_BYTES:
            raise HPMError(f"the file is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
        image = _open_header(data)
    w, h = image.size
    if w < 1 or h < 1 or max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:
        raise HPMError(f"image dimensions {w}x{h} are outside the accepted range (1 to {MAX_SIDE} px a side, "
                       f"at most {MAX_PIXELS // 1_000_000} megapixels)")
    try:  # the size limits above are below PIL's own decompression-bomb limits
        frame = next(ImageSequence.Iterator(image)).copy()  # animated: the first frame
        frame = ImageOps.exif_transpose(frame)
        rgb = _to_rgb(frame)
        rgb.info[SOURCE_MODE] = frame.mode  # what it was, for describe_conversion
        return rgb
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise HPMError(f"the image could not be decoded ({type(e).__name__}: {e})") from None


def _open_header(data: bytes) -> Image.Image:
    """Parse the header only (size and mode known, no pixel decoded)."""
    try:
        with warnings.catch_warnings():  # our own limits, checked next, are stricter than PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise HPMError("not an image file that can be read (PNG, JPEG, GIF, WebP, BMP, TIFF ...)") from None
    except Image.DecompressionBombError as e:  # PIL refuses headers beyond twice its pixel limit outright
        raise HPMError(f"refused as a decompression bomb: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:  # a header that starts like an image, then breaks
        raise HPMError(f"the image could not be decoded ({type(e).__name__}: {e})") from None


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise HPMError(f"no such file: {path}")
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise HPMError(f"the file is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    return path.read_bytes()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16-bit and float scaled to 8 bits, alpha composited on white, CMYK/palette converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if image.mode.startswith("I;16") else (float(a.min()), float(a.max()))
        a = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)
        image = Image.fromarray((a * 255).round().astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGB" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def describe_conversion(image: Image.Image, input_size: tuple[int, int, int]) -> str | None:
    """What :func:`open_image` and :func:`image_to_tensor` do to ``image`` on the way to the model, in words
    (``"converted from greyscale (L) to RGB; resized from 28x28 to 32x32"``), or None when it goes in as it is."""
    steps = []
    mode = image.info.get(SOURCE_MODE, image.mode)
    if mode != "RGB":
        steps.append(f"converted from {MODE_NAMES.get(mode, 'mode')} ({mode}) to RGB")
    _, h, w = input_size
    if image.size != (w, h):
        scale = min(h, w) / min(image.size)
        resized = (round(image.size[0] * scale), round(image.size[1] * scale))
        steps.append(f"resized from {image.size[0]}x{image.size[1]} to {resized[0]}x{resized[1]} (short side "
                     f"{min(h, w)})" + (f", centre-cropped to {w}x{h}" if resized != (w, h) else ""))
    return "; ".join(steps) or None


def image_to_tensor(image: Image.Image, input_size: tuple[int, int, int]) -> Tensor:
    """Resize the short side to the model's input and centre-crop: ``[1, 3, H, W]`` in [0, 1]."""
    from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

    _, h, w = input_size
    image = center_crop(resize(image, min(h, w), antialias=True), [h, w])
    return pil_to_tensor(image).float().div(255).unsqueeze(0).contiguous()


def tensor_to_image(x: Tensor, min_side: int = 0) -> np.ndarray:
    """``[1, 3, H, W]`` or ``[3, H, W]`` in [0, 1] -> uint8 ``H x W x 3``, enlarged by an integer factor
    (nearest neighbour, so pixels stay visible) until the short side is at least ``min_side``."""
    x = x.detach().cpu().squeeze(0).clamp(0, 1)
    return enlarged((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), min_side)[0]


def enlarged(pixels: np.ndarray, min_side: int, max_side: int | None = None) -> tuple[np.ndarray, int]:
    """``pixels`` (``H x W [x C]``) repeated by the smallest integer factor that makes the short side at least
    ``min_side`` (nearest neighbour: each pixel becomes a square of equal pixels; no new colour), but never so far
    that the long side exceeds ``max_side``, and that factor (1: unchanged)."""
    factor = max(1, -(-min_side // min(pixels.shape[:2])))
    if max_side is not None:
        factor = max(1, min(factor, max_side // max(pixels.shape[:2])))
    return (pixels.repeat(factor, 0).repeat(factor, 1) if factor > 1 else pixels), factor


def to_8bit(x: Tensor) -> Tensor:
    """``x`` in [0, 1] rounded to the nearest 8-bit level ``k / 255``: what a PNG of it holds."""
    return x.clamp(0, 1).mul(255).round().div(255)


def to_8bit_within(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """An adversarial image as a PNG can hold it: ``x_adv`` rounded to 8-bit levels and kept within the l_inf
    ball of radius ``eps`` around the 8-bit image ``x`` (whole levels only, so the ball's edge is not crossed)."""
    levels = math.floor(eps * 255 + 1e-6)
    base = x.mul(255).round()
    return torch.minimum(torch.maximum(x_adv.clamp(0, 1).mul(255).round(), base - levels), base + levels).div(255)
