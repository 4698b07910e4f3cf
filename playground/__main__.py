"""Command line: ``serve`` | ``run`` | ``bench`` | ``targets`` | ``prepare``. Same engine as the UI.

Exit codes: 0 every target answered, 1 any target failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from playground import secrets, settings
from playground.backends import make_backend
from playground.catalog import Catalog, CatalogError, Target, load_catalog
from playground.images import prepare_images
from playground.settings import SettingsError
from playground.request import ChatRequest, InputError, build_messages, make_params
from playground.report import result_entry, run_document, with_environment
from playground.runner import Column, Job, Run

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # as a shell reports a program that Ctrl+C ended


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m playground", description="Phi Playground")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("targets", "list every target and whether it can run now"),
                       ("run", "send one prompt to several targets and print the answers"),
                       ("bench", "run one prompt on several targets many times and print statistics"),
                       ("serve", "launch the web UI"),
                       ("replay", "replay a recorded run (an exported run file, or a run id) in the terminal"),
                       ("prepare", "build the bundled model's ONNX cache now (the Docker image does this at build time)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--catalog", help="a user catalog YAML file (adds to or overrides the built-in targets)")
    for run in (sub.choices["run"], sub.choices["bench"]):
        run.add_argument("--targets", required=True, help="comma-separated target ids")
        run.add_argument("--prompt", required=True)
        run.add_argument("--system")
        run.add_argument("--image", action="append", default=[], metavar="PATH",
                         help="an image to send with the prompt (repeatable); targets without vision get the text alone")
        run.add_argument("--max-tokens", type=int)
        run.add_argument("--temperature", type=float)
        run.add_argument("--top-p", type=float)
        run.add_argument("--seed", type=int)
        run.add_argument("--json", action="store_true", help="print one JSON object")
    sub.choices["run"].add_argument("--no-record", action="store_true",
                                    help="leave the run out of the run database (History, replay by id)")
    bench = sub.choices["bench"]
    bench.add_argument("--repeat", type=int, default=5, help="measured runs per target (1-100; default 5)")
    bench.add_argument("--warmup", type=int, default=1, help="warm-up runs per target, not counted (0-10; default 1)")
    bench.add_argument("--goodput", metavar="ttft:MS,tps:N", help="objectives a run must meet, e.g. ttft:500,tps:20")
    bench.add_argument("--csv", action="store_true", help="print one CSV row per run")
    bench.add_argument("--fair", action=argparse.BooleanOptionalAction, default=None,
                       help="local targets take turns for the CPU (default: on with two or more local targets)")
    replay = sub.choices["replay"]
    replay.add_argument("run", help="an exported run file (JSON), or a recorded run's id")
    replay.add_argument("--speed", default="1", help="1, 2, 4 (times the recorded pace) or instant (default 1)")
    serve = sub.choices["serve"]
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    return parser


def cmd_targets(catalog: Catalog) -> int:
    width = max(len(t.id) for t in catalog.targets)
    for target in catalog.targets:
        available = make_backend(target).availability()
        mark = {"ready": "ready", "first_run": "ready*", "unavailable": "no"}[available.state]
        print(f"{target.id:<{width}}  {target.backend:<12} {mark:<7} {available.reason}")
    print("\n* runnable; the first run downloads or builds the model first", file=sys.stderr)
    return EXIT_OK


async def _run(jobs: list[Job], quiet: bool) -> tuple[list[Column], bool]:
    """The run's columns, and whether Ctrl+C stopped it: the first Ctrl+C is the page's Stop (what
    came so far is kept, printed and recorded); a second one interrupts at once."""
    run = Run(jobs)
    interrupted = False
    loop = asyncio.get_running_loop()

    def stop() -> None:
        nonlocal interrupted
        interrupted = True
        loop.remove_signal_handler(signal.SIGINT)  # the next Ctrl+C: Python's KeyboardInterrupt
        print("\nstopping (Ctrl+C again to quit at once)…", file=sys.stderr, flush=True)
        run.stop()

    try:
        loop.add_signal_handler(signal.SIGINT, stop)
    except (NotImplementedError, RuntimeError):  # Windows' loop, or not the main thread: Ctrl+C as before
        pass
    columns: list[Column] = []
    try:
        async for columns in run.frames():
            if not quiet:
                states = ", ".join(f"{c.target.id}: {c.detail or c.status}" for c in columns)
                print(f"\r\x1b[K{states}"[:200], end="", file=sys.stderr, flush=True)
    finally:
        if not interrupted:
            try:
                loop.remove_signal_handler(signal.SIGINT)
            except (NotImplementedError, RuntimeError):
                pass
    if not quiet:
        print(file=sys.stderr)
    return columns, interrupted


def _request(args: argparse.Namespace, catalog: Catalog) -> tuple[list[Target], ChatRequest, tuple[Any, ...]]:
    ids = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not ids:
        raise InputError("--targets: give at least one target id")
    try:
        targets = [catalog.get(i) for i in ids]
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None
    params = make_params(max_tokens=args.max_tokens, temperature=args.temperature,
                         top_p=args.top_p, seed=args.seed)
    images = prepare_images(args.image)
    for image in images:
        for note in image.notes:
            print(f"{image.name}: {note}", file=sys.stderr)
    return targets, ChatRequest(build_messages(args.prompt, args.system, images=images), params), images


def cmd_run(args: argparse.Namespace, catalog: Catalog) -> int:
    targets, request, images = _request(args, catalog)
    params = request.params
    jobs = [Job(t, request) for t in targets]
    columns, interrupted = asyncio.run(_run(jobs, quiet=args.json or not sys.stderr.isatty()))
    if args.json or not args.no_record:
        document = with_environment(run_document(args.prompt, args.system, params, columns, images), targets)
    if not args.no_record:
        _record(document, columns)
    if args.json:
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        for column in columns:
            entry = result_entry(column)
            print(f"=== {column.target.label} [{entry['status']}]")
            for notice in column.notices:
                print(f"note: {notice}")
            print(column.text)
            if entry["error"]:
                print(f"error: {entry['error']}")
            print(figures_line(entry) + "\n")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if all(c.status == "done" for c in columns) else EXIT_FAILED


def _record(document: dict[str, Any], columns: list) -> None:
    """Into the run database, as the page records its runs; a database that cannot take it is said
    on stderr and never fails the run."""
    from playground import records

    if records.url() is None:
        return  # PLAYGROUND_DB=off
    try:
        run_id = records.record(document, columns, "command line")
    except records.RecordError as exc:
        print(f"note: the run was not recorded: {exc}", file=sys.stderr)
        return
    print(f"recorded as {run_id} (python -m playground replay {run_id})", file=sys.stderr)


def figures_line(entry: dict[str, Any]) -> str:
    """A result's figures on one line (``report.result_entry``'s rounding)."""
    return (f"TTFT {entry['ttft_s']} s · decode {entry['decode_tokens_per_s']} tok/s · "
            f"tokens {entry['output_tokens']} ({entry['tokens_source']}) · E2E {entry['e2e_s']} s")


def cmd_prepare() -> int:
    """Build the int4 ONNX model of the bundled GGUF into the cache, printing progress; instant when cached."""
    from playground import models
    from playground.errors import BackendError
    from playground.onnx_build import ensure_bundled_onnx

    async def build() -> None:
        async for line in ensure_bundled_onnx():
            print(line, flush=True)

    try:
        asyncio.run(build())
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"bundled ONNX model ready in {models.bundled_onnx_dir()}", flush=True)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace, catalog: Catalog) -> int:
    from playground import repeats, stats

    if not 1 <= args.repeat <= 100:
        raise InputError(f"--repeat: must be from 1 to 100 (got {args.repeat})")
    if not 0 <= args.warmup <= 10:
        raise InputError(f"--warmup: must be from 0 to 10 (got {args.warmup})")
    try:
        objectives = stats.Objectives.parse(args.goodput) if args.goodput else None
    except ValueError as exc:
        raise InputError(str(exc)) from None
    targets, request, _ = _request(args, catalog)
    quiet = args.json or args.csv or not sys.stderr.isatty()

    def progress(sample: repeats.Sample) -> None:
        if not quiet:
            kind = "warm-up" if sample.warmup else "run"
            print(f"{sample.target}: {kind} {sample.run} {sample.status}", file=sys.stderr, flush=True)

    fair = repeats.fair_by_default(targets, args.repeat, args.warmup) if args.fair is None else args.fair
    results = asyncio.run(repeats.bench(targets, request, args.repeat, args.warmup, fair, progress))
    document = repeats.document(targets, results, request, args.prompt, args.repeat, args.warmup, objectives, fair)
    if args.json:
        print(json.dumps(document, ensure_ascii=False, indent=2))
    elif args.csv:
        print(repeats.csv_text(document), end="")
    else:
        print(repeats.text_report(document))
    failed = any(entry["failed_runs"] for entry in document["targets"])
    return EXIT_FAILED if failed else EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    """The run's columns, one after another, each at its recorded pace; then the figures."""
    from pathlib import Path

    from playground import records
    from playground.replay import Replay, when

    speeds = {"1": 1.0, "2": 2.0, "4": 4.0, "instant": None}
    if args.speed not in speeds:
        raise InputError(f"--speed: must be one of {', '.join(speeds)} (got {args.speed!r})")
    try:
        path = Path(args.run)
        document = (records.read_export(path) if path.suffix == ".json" or path.is_file()
                    else records.load(args.run))
    except records.RecordError as exc:
        raise InputError(f"{args.run}: {exc}") from None
    print(f"replay of {when(document)}: {document['prompt'][:200]!r}", file=sys.stderr)

    async def play(index: int) -> Column:
        single = {**document, "results": [document["results"][index]], "timelines": [document["timelines"][index]]}
        shown, column = 0, None
        async for columns in Replay(single, speeds[args.speed]).frames():
            column = columns[0]
            print(column.text[shown:], end="", flush=True)
            shown = len(column.text)
        assert column is not None
        return column

    for index, result in enumerate(document["results"]):
        print(f"\n== {result.get('label') or result.get('id')}", flush=True)
        column = asyncio.run(play(index))
        print(f"\n-- {column.status} · {figures_line(result_entry(column))}", flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    secrets.redact_logs()
    if found := settings.problems():
        print("\n".join(f"error: {line}" for line in found), file=sys.stderr)
        return EXIT_USAGE
    try:
        catalog = load_catalog(args.catalog)
        if args.command == "targets":
            return cmd_targets(catalog)
        if args.command == "prepare":
            return cmd_prepare()
        if args.command == "serve":
            from playground.ui import launch

            launch(catalog, host=args.host, port=args.port)
            return EXIT_OK
        if args.command == "bench":
            return cmd_bench(args, catalog)
        if args.command == "replay":
            return cmd_replay(args)
        return cmd_run(args, catalog)
    except (CatalogError, InputError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl+C outside a run's first one (see _run): quit, without a traceback
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
