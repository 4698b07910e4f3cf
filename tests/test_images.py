"""Image preprocessing: limits, orientation, modes, and every bad input, on pictures made here."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from playground import images
from playground.errors import BackendError
from playground.catalog import Target
from playground.events import ErrorKind
from playground.images import ImageError, PreparedImage, fit_image, prepare_image, prepare_images
from playground.request import ChatRequest, Message
from playground.vision import adapt_request, text_only_notice

ROOT = Path(__file__).resolve().parents[1]
RED, BLUE, GREEN = (220, 20, 30), (20, 40, 220), (30, 200, 60)


def save(im: Image.Image, path: Path, fmt: str | None = None, **options: object) -> Path:
    im.save(path, fmt, **options)
    return path


def decoded(image: PreparedImage) -> Image.Image:
    return Image.open(io.BytesIO(image.data))


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def halves(size: tuple[int, int], left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    im = Image.new("RGB", size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return im


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width``×``height`` and holds no pixels: costs nothing to make."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"")


# --- good pictures ----------------------------------------------------------------------
def test_small_png_round_trips_exactly(tmp_path: Path) -> None:
    source = halves((120, 80), RED, BLUE)
    image = prepare_image(save(source, tmp_path / "chart.png"))
    assert (image.name, image.mime, image.width, image.height, image.notes) == ("chart.png", "image/png", 120, 80, ())
    assert list(decoded(image).convert("RGB").getdata()) == list(source.getdata())  # lossless
    assert image.data_uri().startswith("data:image/png;base64,")
    assert base64.b64decode(image.b64()) == image.data and image.b64_len == len(image.b64())


def test_a_photo_stays_jpeg_and_is_downscaled_to_the_side_limit(tmp_path: Path) -> None:
    path = save(halves((3000, 1000), RED, GREEN), tmp_path / "wide.jpg", quality=90)
    image = prepare_image(path)
    assert image.mime == "image/jpeg" and (image.width, image.height) == (1536, 512)
    assert image.notes == ("downscaled from 3000×1000 to 1536×512",)
    pic = decoded(image).convert("RGB")
    assert close(pic.getpixel((100, 256)), RED) and close(pic.getpixel((1400, 256)), GREEN)
    smaller = prepare_image(path, max_side=300)
    assert (smaller.width, smaller.height) == (300, 100)


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    source = halves((200, 100), RED, BLUE)  # stored sideways: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = save(source, tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    image = prepare_image(path)
    assert (image.width, image.height) == (100, 200)
    pic = decoded(image).convert("RGB")
    assert close(pic.getpixel((50, 20)), RED) and close(pic.getpixel((50, 180)), BLUE)
    with Image.open(path) as original:  # the same as Pillow's own exif_transpose
        assert ImageOps.exif_transpose(original).size == (image.width, image.height)
        assert close(ImageOps.exif_transpose(original).convert("RGB").getpixel((50, 20)), pic.getpixel((50, 20)))


def test_animated_gif_uses_the_first_frame_and_says_so(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (40, 30), RED), Image.new("RGB", (40, 30), BLUE)]
    path = tmp_path / "blink.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = prepare_image(path)
    assert "animated GIF: first frame used" in image.notes
    assert close(decoded(image).convert("RGB").getpixel((20, 15)), RED, tol=30)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = save(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), tmp_path / "print.jpg", quality=95)
    image = prepare_image(path)
    assert "CMYK converted to RGB" in image.notes
    assert decoded(image).mode == "RGB" and close(decoded(image).getpixel((30, 20)), (255, 0, 0), tol=20)


def test_16_bit_png_keeps_its_levels_instead_of_clipping_to_white(tmp_path: Path) -> None:
    path = save(Image.new("I;16", (50, 40), 40000), tmp_path / "scan16.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I;16")  # really a 16-bit file
    image = prepare_image(path)
    assert any("16-bit" in note for note in image.notes)
    assert close(decoded(image).convert("RGB").getpixel((10, 10)), (155, 155, 155), tol=2)  # 40000/65535*255


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_flattened_on_white(tmp_path: Path, mode: str) -> None:
    if mode == "P":
        im = Image.new("P", (40, 20), 1)
        im.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
        im.paste(0, (0, 0, 20, 20))
        im.info["transparency"] = 0  # the left half is palette entry 0: transparent
        opaque = (200, 0, 0)
    else:
        im = Image.new(mode, (40, 20), (200, 0, 0, 255) if mode == "RGBA" else (80, 255))
        im.paste((0, 0, 0, 0) if mode == "RGBA" else (0, 0), (0, 0, 20, 20))
        opaque = (200, 0, 0) if mode == "RGBA" else (80, 80, 80)
    image = prepare_image(save(im, tmp_path / f"{mode}.png"))
    pic = decoded(image).convert("RGB")
    assert pic.getpixel((5, 10)) == (255, 255, 255)
    assert pic.getpixel((30, 10)) == opaque


# --- bad input --------------------------------------------------------------------------
def test_not_an_image_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not a picture")
    with pytest.raises(ImageError, match=r"^notes.png: not an image"):
        prepare_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_refused_naming_the_file(tmp_path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3)).save(buffer, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match=rf"^cut.{fmt.lower()}: corrupted or truncated image"):
        prepare_image(path)


def test_corrupted_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    with pytest.raises(ImageError, match=r"^broken.png: "):
        prepare_image(path)


def test_missing_file_folder_and_oversized_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImageError, match=r"^gone.jpg: cannot read it"):
        prepare_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match="is a folder"):
        prepare_image(tmp_path)
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 1024)
    big = save(Image.frombytes("RGB", (100, 100), os.urandom(30000)), tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"^big.png: .*the limit is"):
        prepare_image(big)


@pytest.mark.parametrize(("size", "fragment"), [((10_000, 7_000), "70 megapixels; the limit is 64"),
                                                ((20_000, 20_000), "too many pixels")])
def test_a_picture_too_big_to_decode_is_refused_from_its_header(size: tuple[int, int], fragment: str) -> None:
    with pytest.raises(ImageError, match=fragment) as info:
        prepare_image(png_header(*size), name="huge.png")
    assert str(info.value).startswith("huge.png: ")


MEASURE = """
import json, resource, sys
from playground.images import prepare_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = prepare_image(sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"size": [image.width, image.height], "notes": image.notes, "peak_mb": (after - before) / 1024}))
"""
MAKE = "import sys; from PIL import Image; Image.new(sys.argv[2], (8000, 6250), sys.argv[3]).save(sys.argv[1])"


@pytest.mark.parametrize(("name", "mode", "colour", "limit_mb"), [
    ("huge.jpg", "RGB", "#1478c8", 80),  # decoded as RGB it would take 200 MB; draft decodes at 1/4
    ("huge.png", "L", "#5a5a5a", 200),  # no reduced decode for PNG: 50 MB, and no full-size RGB copy
])
def test_a_50_megapixel_image_is_downscaled_in_bounded_memory(tmp_path: Path, name: str, mode: str, colour: str,
                                                            limit_mb: int) -> None:
    path = tmp_path / name
    subprocess.run([sys.executable, "-c", MAKE, str(path), mode, colour], check=True, timeout=60)
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["size"] == [1536, 1200]
    assert result["notes"] == ["downscaled from 8000×6250 to 1536×1200"]
    assert result["peak_mb"] < limit_mb, result


def test_too_many_images_for_one_prompt(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (8, 8), RED), tmp_path / "dot.png")
    assert len(prepare_images([path] * images.MAX_IMAGES_PER_PROMPT)) == images.MAX_IMAGES_PER_PROMPT
    with pytest.raises(ImageError, match=f"{images.MAX_IMAGES_PER_PROMPT + 1} images attached; the limit is"):
        prepare_images([path] * (images.MAX_IMAGES_PER_PROMPT + 1))


def test_gradio_multimodal_value(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (8, 8), RED), tmp_path / "dot.png")
    text, prepared = images.from_multimodal({"text": "what?", "files": [str(path), {"path": str(path)}]})
    assert text == "what?" and [i.name for i in prepared] == ["dot.png", "dot.png"]
    assert images.from_multimodal({"text": "plain"}) == ("plain", ())
    assert images.from_multimodal(None) == ("", ()) and images.from_multimodal("just text") == ("just text", ())
    (tmp_path / "x.txt").write_text("no")
    with pytest.raises(ImageError, match=r"^x.txt: not an image"):
        images.from_multimodal({"text": "t", "files": [str(tmp_path / "x.txt")]})


def test_image_limits_belong_to_vision_targets() -> None:
    with pytest.raises(ValueError, match="max_images: only used by vision targets"):
        target(max_images=2)
    assert target(vision=True, max_images=2, max_image_side=768).max_image_side == 768


# --- per-target limits ------------------------------------------------------------------
def noisy(size: tuple[int, int]) -> Image.Image:
    """Four colour quadrants under noise that JPEG cannot squeeze: big files, known colours."""
    base = Image.new("RGB", size, RED)
    w, h = size
    base.paste(GREEN, (w // 2, 0, w, h // 2))
    base.paste(BLUE, (0, h // 2, w // 2, h))
    base.paste((230, 220, 40), (w // 2, h // 2, w, h))
    noise = Image.frombytes("L", size, os.urandom(w * h)).convert("RGB")
    return Image.blend(base, noise, 0.15)


def test_fit_image_meets_a_byte_cap_and_a_side_limit(tmp_path: Path) -> None:
    image = prepare_image(save(noisy((1200, 900)), tmp_path / "noisy.jpg", quality=95))
    assert image.b64_len > 180_000
    capped = fit_image(image, None, 180_000)
    assert capped.b64_len <= 180_000 and capped.mime == "image/jpeg"
    assert capped.notes[-1].startswith("sent as ") and "to fit 180,000 bytes of base64" in capped.notes[-1]
    pic = decoded(capped).convert("RGB").resize((4, 4), Image.Resampling.BOX)
    assert close(pic.getpixel((0, 0)), RED, tol=40) and close(pic.getpixel((3, 3)), (230, 220, 40), tol=40)
    side = fit_image(image, 600)
    assert (side.width, side.height) == (600, 450)
    assert fit_image(image, 2000, 10**8) is image  # already fits: untouched


def target(**more: object) -> Target:
    return Target(id="t", label="T", backend="openai", model="m", base_url="http://127.0.0.1:9/v1", **more)


def test_adapt_request_per_target(tmp_path: Path) -> None:
    one = prepare_image(save(Image.new("RGB", (30, 20), RED), tmp_path / "a.png"))
    request = ChatRequest((Message("system", "s"), Message("user", "what is this?", (one, one))))
    text_only, notices = adapt_request(request, target(), backend_takes_images=True)
    assert text_only.images == () and text_only.messages[1].content == "what is this?"
    assert notices == [text_only_notice(2)] == ["text only: 2 images not sent"]
    assert text_only_notice(1) == "text only: image not sent"
    _, notices = adapt_request(request, target(vision=True), backend_takes_images=False)
    assert notices[0].startswith("text only: 2 images not sent")
    sent, notices = adapt_request(request, target(vision=True), backend_takes_images=True)
    assert sent.images == (one, one) and notices == []
    with pytest.raises(BackendError) as info:
        adapt_request(request, target(vision=True, max_images=1), backend_takes_images=True)
    assert info.value.kind is ErrorKind.BAD_REQUEST
    assert "2 images attached, but T accepts at most 1" in info.value.message


DEV_ZERO = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))  # without the cap it would read on to this
from playground.images import ImageError, prepare_image
try:
    prepare_image("/dev/zero")
except ImageError as exc:
    print(exc)
"""


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_file_that_reports_no_size_is_read_no_further_than_the_limit() -> None:
    """/dev/zero (like a FIFO) has st_size 0: the size check alone would let it read without end."""
    done = subprocess.run([sys.executable, "-c", DEV_ZERO], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    limit = images.MAX_FILE_BYTES // 2**20
    assert done.stdout.strip() == f"zero: over {limit} MB; the limit is {limit} MB"

