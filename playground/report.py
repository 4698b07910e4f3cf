"""Run results as rows, a DataFrame, and CSV / JSON exports. Never carries a key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from playground.events import ServerTimings
from playground.metrics import tokens_text

if TYPE_CHECKING:
    import pandas as pd

    from playground.images import PreparedImage
    from playground.request import GenerationParams
    from playground.roofline import Ceiling
    from playground.runner import Column

TABLE_COLUMNS = ["target", "backend", "TTFT (s)", "decode tok/s", "tokens", "tokens source", "E2E (s)",
                 "clock ±ms", "server tok/s", "prompt eval (s)", "load (s)", "% of ceiling", "status"]
SERVER_FIELDS = [f.name for f in dataclasses.fields(ServerTimings)]
SERVER_DIGITS = {"decode_tokens_per_s": 2, "prompt_eval_s": 4, "load_s": 4, "total_s": 4}


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def result_entry(column: Column) -> dict[str, Any]:
    """One target's result, in the shape the command line's --json prints."""
    m = column.metrics()
    ok = column.status == "done"
    stopped = column.status == "stopped"  # by the user: not a failure, and what came before is kept
    return {
        "id": column.target.id,
        "label": column.target.label,
        "backend": column.target.backend,
        "model": column.target.model,
        "status": "ok" if ok else "stopped" if stopped else "error",
        "error": None if ok or stopped else (column.error or column.status),
        "finish_reason": column.finish_reason,
        "text": column.text,
        "ttft_s": _round(m.ttft_s, 4),
        "e2e_s": _round(m.e2e_s, 4),
        "prep_s": _round(m.prep_s, 3),
        "output_tokens": m.output_tokens,
        "tokens_source": m.tokens_source,
        "prompt_tokens": column.usage.prompt_tokens if column.usage else None,
        "cached_prompt_tokens": column.usage.cached_prompt_tokens if column.usage else None,
        "decode_tokens_per_s": _round(m.decode_tokens_per_s, 2),
        "itl_p50_s": _round(m.itl_p50_s, 4),
        "itl_p95_s": _round(m.itl_p95_s, 4),
        "itl_basis": m.itl_basis,
        "clock_lag_ms": round(column.timing_bound_s * 1000, 1),
        "timing_uncertain": column.timing_uncertain,
        "stamped_in": column.stamped_in,  # whose loop took the stamps (and measured the ±)
        "notices": list(column.notices),
        "images_sent": column.images_sent,
        "cold": column.cold,  # the target's first request in this process (a load, a connection)
        "server": server_entry(column),
    }


def server_entry(column: Column) -> dict[str, Any] | None:
    """What the server or engine reported about itself; None when it reported nothing."""
    if column.server is None:
        return None
    figures = dataclasses.asdict(column.server)
    return {k: _round(v, SERVER_DIGITS[k]) if k in SERVER_DIGITS else v for k, v in figures.items()}


def run_document(prompt: str, system: str | None, params: GenerationParams, columns: list[Column],
                 images: tuple[PreparedImage, ...] = ()) -> dict[str, Any]:
    """The whole run; ``images`` are described (name, size, notes), never embedded."""
    return {
        "prompt": prompt,
        "system": system or None,
        "parameters": params.model_dump(),
        "images": [image_entry(i) for i in images],
        "results": [result_entry(c) for c in columns],
    }


def with_environment(document: dict[str, Any], targets: list[Any]) -> dict[str, Any]:
    """The document with what produced it: versions, the machine, and each target's model file or
    endpoint. Slow the first time (library metadata, a model file's hash): call it off any loop."""
    from playground import environment

    return {**document, "environment": {**environment.machine(),
                                        "targets": [environment.target_facts(t) for t in targets]}}


THUMBNAIL_SIDE = 96


def image_entry(image: PreparedImage) -> dict[str, Any]:
    """An image as a run's record keeps it: what it was (a hash of the bytes sent) and a thumbnail to
    recognise it by, never the picture itself."""
    import hashlib

    return {"name": image.name, "mime": image.mime, "width": image.width, "height": image.height,
            "bytes": len(image.data), "sha256": hashlib.sha256(image.data).hexdigest(),
            "thumbnail": thumbnail(image.data), "notes": list(image.notes)}


def thumbnail(data: bytes) -> str | None:
    """A JPEG data URI at most THUMBNAIL_SIDE pixels a side (a few KB); None if it cannot be made."""
    import base64
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as picture:
            small = picture.convert("RGB")
            small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            out = io.BytesIO()
            small.save(out, "JPEG", quality=70)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def status_word(column: Column) -> str:
    return f"error: {column.error}" if column.status == "error" else column.status


def roofline_entry(ceiling: Ceiling, decode_tokens_per_s: float) -> dict[str, Any]:
    """A measured decode rate against this machine's ceiling (``roofline.for_target``)."""
    return {"bandwidth_gb_s": ceiling.bandwidth_gb_s, "bytes_per_token": ceiling.bytes_per_token,
            "ceiling_tokens_per_s": ceiling.tokens_per_s, "share_of_ceiling": ceiling.share(decode_tokens_per_s),
            "text": ceiling.describe(decode_tokens_per_s)}


def table_row(column: Column, ceiling: Ceiling | None = None) -> dict[str, Any]:
    m = column.metrics()
    server = column.server
    tokens = None if m.output_tokens is None else tokens_text(m.output_tokens, m.tokens_source)
    return {
        "target": column.target.label,
        "backend": column.target.backend,
        "TTFT (s)": _round(m.ttft_s),
        "decode tok/s": _round(m.decode_tokens_per_s, 1),
        "tokens": tokens,
        "tokens source": m.tokens_source,
        "E2E (s)": _round(m.e2e_s),
        "clock ±ms": round(column.timing_bound_s * 1000, 1),
        "server tok/s": _round(server.decode_tokens_per_s, 1) if server else None,
        "prompt eval (s)": _round(server.prompt_eval_s) if server else None,
        "load (s)": _round(server.load_s) if server else None,
        "% of ceiling": (round(ceiling.share(m.decode_tokens_per_s) * 100)
                         if ceiling is not None and m.decode_tokens_per_s else None),
        "status": status_word(column),
    }


def results_frame(columns: list[Column], ceilings: list[Ceiling | None] | None = None) -> pd.DataFrame:
    """A row per column; ``ceilings``: each local target's roofline ("% of ceiling"), where known."""
    import pandas as pd

    ceilings = ceilings or [None] * len(columns)
    return pd.DataFrame([table_row(c, r) for c, r in zip(columns, ceilings)], columns=TABLE_COLUMNS)


def write_exports(document: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """The run as JSON (everything) and CSV (one row per target, text included). The CSV by the
    standard library's writer, as the benchmark's (0.8 ms for six rows; pandas took 2.8). A whole
    number is written as one (pandas wrote 8.0 in a column that also held an empty cell)."""
    import csv

    from playground import environment

    folder.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = folder / "phi-playground-run.json", folder / "phi-playground-run.csv"
    json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False), encoding="utf-8")
    rows = []
    for result in document["results"]:
        row = {k: v for k, v in result.items() if k not in ("server", "notices")}
        row["notices"] = " | ".join(result["notices"])
        server = result.get("server") or {}
        for key in SERVER_FIELDS:  # always present, empty when the backend reported nothing
            row[f"server_{key}"] = server.get(key)
        row.update(prompt=document["prompt"], system=document["system"], images=len(document.get("images", [])),
                   **document["parameters"])
        env = document.get("environment")
        if env:  # in every row, so that rows of two exports can be compared on their own
            facts = next((t for t in env.get("targets", []) if t.get("id") == result.get("id")), {})
            row.update(environment.export_columns(env, facts))
        rows.append(row)
    fields = list(dict.fromkeys(key for row in rows for key in row))  # each row's columns, in order, once
    with open(csv_path, "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")  # as pandas wrote it
        writer.writeheader()
        writer.writerows({k: csv_safe(v) for k, v in row.items()} for row in rows)
    return csv_path, json_path


def write_bench_exports(document: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """A benchmark as JSON (statistics, every run, the environment) and CSV (one row per run)."""
    from playground import repeats

    folder.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = folder / "phi-playground-bench.json", folder / "phi-playground-bench.csv"
    json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False), encoding="utf-8")
    csv_path.write_text(repeats.csv_text(document), encoding="utf-8")
    return csv_path, json_path


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula, quoted as text (OWASP's advice)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value
