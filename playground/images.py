"""Images in: decode safely, normalise to RGB, downscale and re-encode within a target's limits.

Everything here is a pure function of bytes (or a path) to a frozen :class:`PreparedImage`.
Memory stays bounded: the header is checked before any pixel is decoded, a JPEG is decoded
at a reduced scale (``Image.draft``), anything else is refused past ``MAX_DECODE_PIXELS``, and
mode conversions run strip by strip on the already reduced picture.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin  # noqa: F401
from PIL import TiffImagePlugin, WebPImagePlugin  # noqa: F401 - registers exactly the formats we read

from playground.request import InputError

DEFAULT_MAX_SIDE = 1536  # the copy every target starts from; a target may ask for less
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_DECODE_PIXELS = 64_000_000  # after a JPEG's reduced-scale decode; about 256 MB at worst
MAX_IMAGES_PER_PROMPT = 8
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # a JPEG may open as MPO (phone cameras)
JPEG_QUALITIES = (90, 80, 70, 60, 50, 40)
STRIP_ROWS = 256  # rows of the reduced picture converted at a time
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


class ImageError(InputError):
    """An image we cannot use, with a message that names the file and says what is wrong."""


@dataclass(frozen=True)
class PreparedImage:
    """An RGB picture encoded as JPEG or PNG, ready to send. ``notes`` tell the user what changed."""

    name: str
    mime: str  # "image/jpeg" | "image/png"
    data: bytes
    width: int
    height: int
    notes: tuple[str, ...] = ()

    def b64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{self.b64()}"

    @property
    def b64_len(self) -> int:
        return b64_len(len(self.data))

    def to_pil(self) -> Image.Image:
        with Image.open(io.BytesIO(self.data)) as im:
            return im.convert("RGB")


def b64_len(n: int) -> int:
    """How many characters of base64 ``n`` bytes become."""
    return 4 * math.ceil(n / 3)


def prepare_image(source: str | Path | bytes, name: str | None = None,
                  max_side: int = DEFAULT_MAX_SIDE) -> PreparedImage:
    """Decode ``source`` (a path or the file's bytes), fix orientation and mode, fit ``max_side``."""
    raw, name = _read(source, name)
    try:
        im = Image.open(io.BytesIO(raw), formats=FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise _not_an_image(name, exc) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: corrupted or unreadable image ({_why(exc)})") from None
    with im:
        return _prepare(im, name, max_side)


def prepare_images(sources: list[str | Path] | list[tuple[str, bytes]], max_side: int = DEFAULT_MAX_SIDE
                   ) -> tuple[PreparedImage, ...]:
    """Several paths (or (name, bytes) pairs); refuses more than ``MAX_IMAGES_PER_PROMPT``."""
    if len(sources) > MAX_IMAGES_PER_PROMPT:
        raise ImageError(f"{len(sources)} images attached; the limit is {MAX_IMAGES_PER_PROMPT} per prompt")
    prepared = []
    for source in sources:
        if isinstance(source, tuple):
            prepared.append(prepare_image(source[1], name=source[0], max_side=max_side))
        else:
            prepared.append(prepare_image(source, max_side=max_side))
    return tuple(prepared)


def from_multimodal(value: dict[str, Any] | str | None, max_side: int = DEFAULT_MAX_SIDE
                    ) -> tuple[str, tuple[PreparedImage, ...]]:
    """Gradio's ``MultimodalTextbox`` value (``{"text": str, "files": [path, ...]}``; a file may
    also come as ``{"path": ...}``) as the prompt text and the prepared images. Raises ImageError."""
    if value is None or isinstance(value, str):
        return value or "", ()
    files = [f.get("path") if isinstance(f, dict) else f for f in value.get("files") or []]
    return str(value.get("text") or ""), prepare_images([f for f in files if f], max_side=max_side)


def _read(source: str | Path | bytes, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        name = name or "image"
        if len(source) > MAX_FILE_BYTES:
            raise _too_large(name, f"{len(source) / 2**20:.0f} MB")
        return source, name
    path = Path(source).expanduser()
    name = name or path.name
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _too_large(name, f"{size / 2**20:.0f} MB")
        with path.open("rb") as file:  # a device or a pipe reports size 0: never read past the limit
            raw = file.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise _too_large(name, f"over {MAX_FILE_BYTES // 2**20} MB")
        return raw, name
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image file") from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot read it ({exc.strerror or exc})") from None


def _too_large(name: str, size: str) -> ImageError:
    return ImageError(f"{name}: {size}; the limit is {MAX_FILE_BYTES // 2**20} MB")


def _not_an_image(name: str, exc: Exception) -> ImageError:
    if isinstance(exc, Image.DecompressionBombError):
        return ImageError(f"{name}: too many pixels to decode safely ({exc})")
    return ImageError(f"{name}: not an image (or not a format we read: {', '.join(FORMATS)})")


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _prepare(im: Image.Image, name: str, max_side: int) -> PreparedImage:
    notes: list[str] = []
    source_size, source_format = im.size, im.format or "?"
    if getattr(im, "is_animated", False):
        notes.append(f"animated {source_format}: first frame used")
    orientation = _orientation(im)
    if source_format in ("JPEG", "MPO"):  # decode at 1/2, 1/4 or 1/8 scale when that still fits
        im.draft(im.mode, _fit(im.size, max_side))
    width, height = im.size
    if width * height > MAX_DECODE_PIXELS:
        raise ImageError(f"{name}: {source_size[0]}×{source_size[1]} is "
                         f"{source_size[0] * source_size[1] / 1e6:.0f} megapixels; the limit is "
                         f"{MAX_DECODE_PIXELS / 1e6:.0f}")
    try:
        im.load()
        rgb = _shrink_to_rgb(im, max_side)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise ImageError(f"{name}: corrupted or truncated image ({_why(exc)})") from None
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    if im.mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif im.mode.startswith("I") or im.mode == "F":
        notes.append(f"{'16-bit' if im.mode.startswith('I;16') else im.mode + '-mode'} image converted to 8-bit RGB")
    shown = (source_size[1], source_size[0]) if orientation in (5, 6, 7, 8) else source_size
    if rgb.size != shown:
        notes.append(f"downscaled from {shown[0]}×{shown[1]} to {rgb.width}×{rgb.height}")
    prefer_png = source_format not in ("JPEG", "MPO")
    mime, data, _ = _encode(rgb, prefer_png, max_b64=None)
    return PreparedImage(name, mime, data, rgb.width, rgb.height, tuple(notes))


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block means no rotation
        return 1


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _shrink_to_rgb(im: Image.Image, max_side: int) -> Image.Image:
    """RGB no larger than ``max_side``: integer box-reduce strip by strip, then a Lanczos resize."""
    target = _fit(im.size, max_side)
    factor = max(1, min(im.width // target[0], im.height // target[1]) // 2)  # keep 2x for Lanczos
    scale = _level_scale(im)
    rgb = Image.new("RGB", (math.ceil(im.width / factor), math.ceil(im.height / factor)))
    step = STRIP_ROWS * factor
    for top in range(0, im.height, step):  # a converted copy of the whole picture could be 4x its size
        strip = _to_rgb(im.crop((0, top, im.width, min(im.height, top + step))), scale)
        rgb.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    return rgb if rgb.size == target else rgb.resize(target, Image.Resampling.LANCZOS)


def _level_scale(im: Image.Image) -> float | None:
    """For 16/32-bit and float pictures: the factor that maps their range onto 0..255."""
    if im.mode.startswith("I;16"):
        return 255 / 65535
    if im.mode in ("I", "F"):
        high = max(abs(v) for v in im.getextrema())
        return 1.0 if high <= 255 else 255 / 65535 if high <= 65535 else 255 / high
    return None


def _to_rgb(im: Image.Image, scale: float | None) -> Image.Image:
    if scale is not None:  # 16-bit and friends: Pillow's own convert would clip them to white
        im = im.convert("I") if im.mode.startswith("I;16") else im
        im = im.point(lambda v: v * scale).convert("L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", im.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return im if im.mode == "RGB" else im.convert("RGB")


def _encode(rgb: Image.Image, prefer_png: bool, max_b64: int | None) -> tuple[str, bytes, int | None]:
    """JPEG (or PNG where it is lossless at a modest cost); the quality used, None for PNG."""
    jpeg = _jpeg(rgb, JPEG_QUALITIES[0])
    if prefer_png:
        png = _png(rgb)
        if len(png) <= 1.5 * len(jpeg) and (max_b64 is None or b64_len(len(png)) <= max_b64):
            return "image/png", png, None
    if max_b64 is None or b64_len(len(jpeg)) <= max_b64:
        return "image/jpeg", jpeg, JPEG_QUALITIES[0]
    for quality in JPEG_QUALITIES[1:]:
        data = _jpeg(rgb, quality)
        if b64_len(len(data)) <= max_b64:
            return "image/jpeg", data, quality
    return "image/jpeg", data, JPEG_QUALITIES[-1]


def _jpeg(rgb: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def _png(rgb: Image.Image) -> bytes:
    out = io.BytesIO()
    rgb.save(out, "PNG", compress_level=6)
    return out.getvalue()


@lru_cache(maxsize=32)
def fit_image(image: PreparedImage, max_side: int | None = None, max_b64: int | None = None) -> PreparedImage:
    """The same picture within a target's limits: at most ``max_side`` pixels a side, and at most
    ``max_b64`` characters of base64. Returns ``image`` itself when it already fits."""
    fits_side = max_side is None or max(image.width, image.height) <= max_side
    if fits_side and (max_b64 is None or image.b64_len <= max_b64):
        return image
    rgb = image.to_pil()
    side = min(max(rgb.size), max_side or max(rgb.size))
    for _ in range(12):
        size = _fit(rgb.size, side)
        resized = rgb if size == rgb.size else rgb.resize(size, Image.Resampling.LANCZOS)
        mime, data, quality = _encode(resized, image.mime == "image/png", max_b64)
        if max_b64 is None or b64_len(len(data)) <= max_b64:
            kind = "PNG" if quality is None else f"JPEG quality {quality}"
            limit = f" to fit {max_b64:,} bytes of base64" if max_b64 is not None else ""
            note = f"sent as {resized.width}×{resized.height} {kind}{limit}"
            return PreparedImage(image.name, mime, data, resized.width, resized.height, image.notes + (note,))
        side = max(16, int(side * min(0.9, math.sqrt(max_b64 / b64_len(len(data))))))
    raise ImageError(f"{image.name}: cannot fit it into {max_b64:,} bytes of base64")
