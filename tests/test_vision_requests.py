"""Images on the wire: what the scripted OpenAI-compatible loopback server receives, per target."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image
from sse_server import Script, ScriptedServer, module_server, openai_target, text_of

from playground.backends.ollama_native import ollama_messages
from playground.catalog import Catalog, Target
from playground.events import ErrorKind
from playground.images import PreparedImage, prepare_image
from playground.report import run_document
from playground.request import ChatRequest, build_messages, make_params
from playground.runner import Job, run_to_end

pytestmark = pytest.mark.usefixtures("close_clients")  # the HTTP clients a test's loop made

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV, KEY = "PLAYGROUND_TEST_KEY", "sk-test-VISION123456"
NIM_MODEL = "microsoft/phi-3.5-vision-instruct"
SCRIPTS = {name: Script(tokens=3) for name in ("vision", "text", "one-image", NIM_MODEL)}
QUADRANTS = {(0, 0): (220, 20, 30), (1, 0): (30, 200, 60), (0, 1): (20, 40, 220), (1, 1): (230, 220, 40)}


server = module_server(SCRIPTS)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def target(base_url: str, model: str, **more: Any) -> Target:
    return openai_target(base_url, model, KEY_ENV, **more)


def quadrants(size: tuple[int, int], noise: float = 0.0) -> Image.Image:
    """Four known colours; ``noise`` makes the file big (JPEG cannot squeeze random pixels)."""
    w, h = size
    im = Image.new("RGB", size)
    for (qx, qy), colour in QUADRANTS.items():
        im.paste(colour, (qx * w // 2, qy * h // 2, (qx + 1) * w // 2, (qy + 1) * h // 2))
    if noise:
        im = Image.blend(im, Image.frombytes("L", size, os.urandom(w * h)).convert("RGB"), noise)
    return im


def assert_same_picture(received: Image.Image, tol: int) -> None:
    """Each quadrant's mean colour is the one drawn (the picture may be smaller and re-encoded)."""
    means = received.convert("RGB").resize((2, 2), Image.Resampling.BOX)
    for (qx, qy), colour in QUADRANTS.items():
        got = means.getpixel((qx, qy))
        assert all(abs(a - b) <= tol for a, b in zip(got, colour)), (qx, qy, got, colour)


def image_parts(body: dict[str, Any]) -> list[str]:
    """The data URIs in the last user message of a received chat request."""
    content = body["messages"][-1]["content"]
    assert isinstance(content, list)
    return [part["image_url"]["url"] for part in content if part["type"] == "image_url"]


def decode_uri(uri: str) -> tuple[str, bytes, Image.Image]:
    head, _, payload = uri.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64")
    data = base64.b64decode(payload, validate=True)
    return head[5:-7], data, Image.open(io.BytesIO(data))


async def test_vision_and_text_only_targets_in_one_run(server: ScriptedServer, tmp_path: Path,
                                                      builtin_catalog: Catalog) -> None:
    photo = tmp_path / "photo.jpg"
    quadrants((2400, 1600), noise=0.12).save(photo, quality=95)
    prepared = prepare_image(photo)
    assert (prepared.width, prepared.height) == (1536, 1024) and prepared.b64_len > 180_000
    # the catalog's own NIM entry (its 180 KB cap), pointed at loopback
    nim = Target(**{**builtin_catalog.get("nim/phi-3.5-vision").model_dump(exclude_none=True),
                    "base_url": server.base_url, "api_key_env": KEY_ENV})
    assert getattr(nim.options, "max_image_bytes", None) == 180_000
    targets = [target(server.base_url, "vision", vision=True), nim, target(server.base_url, "text")]
    request = ChatRequest(build_messages("What is in the picture?", "be brief", images=(prepared,)),
                          make_params(max_tokens=3))
    columns = await run_to_end([Job(t, request) for t in targets])
    assert [c.status for c in columns] == ["done"] * 3, [c.error for c in columns]
    assert all(c.text == text_of(3) for c in columns)

    (vision_body,) = [r.body for r in server.chat_requests("vision")]
    (uri,) = image_parts(vision_body)
    mime, data, picture = decode_uri(uri)
    assert mime == "image/jpeg" and data == prepared.data and picture.size == (1536, 1024)
    assert_same_picture(picture, tol=25)
    content = vision_body["messages"][-1]["content"]
    assert content[-1] == {"type": "text", "text": "What is in the picture?"}  # images first, then the text
    assert vision_body["messages"][0] == {"role": "system", "content": "be brief"}  # others stay plain strings
    assert columns[0].images_sent == 1

    (nim_body,) = [r.body for r in server.chat_requests(NIM_MODEL)]
    (uri,) = image_parts(nim_body)
    assert len(uri.partition(",")[2]) <= 180_000  # NIM refuses inline images over ~180 KB of base64
    _, _, picture = decode_uri(uri)
    assert max(picture.size) <= 1536 and picture.size[0] / picture.size[1] == pytest.approx(1.5, abs=0.01)
    assert_same_picture(picture, tol=40)
    assert any("to fit 180,000 bytes of base64" in n for n in columns[1].notices), columns[1].notices

    (text_body,) = [r.body for r in server.chat_requests("text")]
    assert all(isinstance(m["content"], str) for m in text_body["messages"])
    assert "image" not in json.dumps(text_body) and "base64" not in json.dumps(text_body)
    assert columns[2].notices == ["text only: image not sent"] and columns[2].images_sent == 0

    document = run_document("What is in the picture?", "be brief", request.params, columns, (prepared,))
    assert document["images"][0]["name"] == "photo.jpg" and "data" not in document["images"][0]
    # what a recorded run keeps of it: a hash of the bytes sent, and a thumbnail, not the picture
    import hashlib

    entry = document["images"][0]
    assert entry["sha256"] == hashlib.sha256(prepared.data).hexdigest()
    _, _, thumb = decode_uri(entry["thumbnail"])
    assert max(thumb.size) <= 96 and len(entry["thumbnail"]) < 12_000
    assert [r["images_sent"] for r in document["results"]] == [1, 1, 0]


async def test_more_images_than_a_target_takes_fails_that_column_only(server: ScriptedServer,
                                                                     tmp_path: Path) -> None:
    picture = tmp_path / "small.png"
    quadrants((64, 48)).save(picture)
    prepared = prepare_image(picture)
    assert prepared.mime == "image/png"
    request = ChatRequest(build_messages("compare these", images=(prepared, prepared)), make_params(max_tokens=3))
    one = target(server.base_url, "one-image", vision=True, max_images=1)
    both = target(server.base_url, "vision", vision=True)
    before = len(server.chat_requests("one-image"))
    columns = await run_to_end([Job(one, request), Job(both, request)])
    assert columns[0].status == "error" and columns[0].error_kind is ErrorKind.BAD_REQUEST
    assert "2 images attached, but one-image accepts at most 1" in (columns[0].error or "")
    assert len(server.chat_requests("one-image")) == before  # nothing was sent
    assert columns[1].status == "done"
    uris = image_parts(server.chat_requests("vision")[-1].body)
    assert len(uris) == 2
    for uri in uris:
        mime, _, pic = decode_uri(uri)
        assert mime == "image/png"
        assert list(pic.convert("RGB").getdata()) == list(quadrants((64, 48)).getdata())  # lossless PNG


def test_ollama_messages_carry_raw_image_bytes(tmp_path: Path) -> None:
    picture = tmp_path / "p.png"
    quadrants((20, 10)).save(picture)
    prepared: PreparedImage = prepare_image(picture)
    request = ChatRequest(build_messages("hi", "sys", images=(prepared,)))
    dicts = ollama_messages(request)
    assert dicts[0] == {"role": "system", "content": "sys"}
    assert dicts[1] == {"role": "user", "content": "hi", "images": [prepared.data]}
    assert ollama_messages(request.without_images())[1] == {"role": "user", "content": "hi"}
    assert request.as_dicts()[1] == {"role": "user", "content": "hi"}  # text only, always


# --- the command line ------------------------------------------------------------------
def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "playground", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_sends_images_to_vision_targets_only(server: ScriptedServer, tmp_path: Path,
                                                 clean_env: Callable[..., dict[str, str]]) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "targets:\n"
        f"  - {{id: see, label: See, backend: openai, model: vision, base_url: '{server.base_url}', vision: true}}\n"
        f"  - {{id: blind, label: Blind, backend: openai, model: text, base_url: '{server.base_url}'}}\n",
        encoding="utf-8")
    frames = [quadrants((40, 30)), Image.new("RGB", (40, 30), "black")]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    sent_before = len(server.chat_requests("vision"))
    done = cli("run", "--catalog", str(catalog), "--targets", "see,blind", "--prompt", "describe",
               "--image", str(gif), "--image", str(gif), "--json", env=clean_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "anim.gif: animated GIF: first frame used" in done.stderr
    document = json.loads(done.stdout)
    assert [i["name"] for i in document["images"]] == ["anim.gif", "anim.gif"]
    see, blind = document["results"]
    assert (see["images_sent"], blind["images_sent"]) == (2, 0)
    assert blind["notices"] == ["text only: 2 images not sent"]
    assert "anim.gif: animated GIF: first frame used" in see["notices"]
    body = server.chat_requests("vision")[sent_before].body
    assert len(image_parts(body)) == 2


@pytest.mark.parametrize(("content", "fragment"), [(b"GIF89a but not really", "not an image"),
                                                   (None, "cannot read it")])
def test_cli_bad_image_exits_2_naming_the_file(tmp_path: Path, clean_env: Callable[..., dict[str, str]],
                                               content: bytes | None, fragment: str) -> None:
    path = tmp_path / "holiday.gif"
    if content is not None:
        path.write_bytes(content)
    done = cli("run", "--targets", "smollm2-onnx", "--prompt", "hi", "--image", str(path),
               env=clean_env(), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: holiday.gif: ") and fragment in done.stderr


def test_builtin_vision_targets(builtin_catalog: Catalog) -> None:
    vision = {t.id: t for t in builtin_catalog.targets if t.vision}
    models = {(t.backend, t.model) for t in vision.values()}
    assert {("openai", "microsoft/phi-3.5-vision-instruct"), ("openai", "microsoft/Phi-3.5-vision-instruct"),
            ("openai", "Phi-3.5-vision-instruct"), ("openai", "microsoft/Phi-4-multimodal-instruct"),
            ("openai", "microsoft/phi-4-multimodal-instruct"), ("onnx", "microsoft/Phi-3.5-vision-instruct-onnx"),
            ("transformers", "microsoft/Phi-4-multimodal-instruct"),
            ("transformers", "microsoft/Phi-3.5-vision-instruct")} <= models
    nim = [t for t in vision.values() if "integrate.api.nvidia.com" in (getattr(t.options, "base_url", None) or "")]
    assert len(nim) == 2 and all(getattr(t.options, "max_image_bytes", None) == 180_000 for t in nim)
    assert vision["hf/phi-3.5-vision-instruct"].options.trust_remote_code is True
    assert not vision["hf/phi-4-multimodal-instruct"].options.trust_remote_code  # native classes, no remote code
    assert not any(getattr(t.options, "trust_remote_code", None) for t in builtin_catalog.targets if t.id != "hf/phi-3.5-vision-instruct")
