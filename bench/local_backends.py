"""Local backends on the bundled SmolLM2: the playground against a bare loop over each library.

For onnx, transformers, llamacpp and openvino, on the same prompt, greedy, 128 new tokens, each in its
own subprocess (so peak memory does not mix), the script prints one Markdown table:

- TTFT and decode tok/s as the playground measures them, through ``playground.runner.Run``
  with its default frame pacing: worker thread, events, queue, metrics;
- the same two figures from a bare streaming loop over the same library and the same loaded
  model: ``og.Generator`` with ``generate_next_token`` and the tokenizer stream;
  ``model.generate`` with a minimal ``BaseStreamer``; ``Llama.generate`` with ``detokenize``;
  ``LLMPipeline.generate`` with a minimal ``StreamerBase`` that decodes each token id.
  Each decodes every token to text, as any streaming client must;
- llama.cpp's bare loop runs at 1 and at 2 threads (``THREAD_SWEEP``), the playground at its
  default (``PLAYGROUND_LLAMACPP_THREADS``, else the CPUs but one): the table shows both
  counts and each bare count's best decode, and the best bare loop is the bar;
- overhead: how much slower the playground decodes than the best bare loop (aim < 5 %);
- peak RSS of the subprocess (``ru_maxrss``): the model loaded once, both loops on it. The
  playground runs onnx models in a process of their own (onnxruntime-genai holds the GIL per
  token), so for onnx the bare loop loads its own copy here and the model process's peak RSS
  (``VmHWM``) is a column of its own; the stream then also crosses a socket, which the overhead includes.

Decode is (tokens - 1) / (last token - first token) on both sides, the playground's definition.
Each side runs ``--repeats`` times after a warm-up, in pairs whose order alternates. The table
gives each side's best run (the fastest decode, the lowest TTFT), which filters out other
processes on a shared machine, and the overhead both from those best runs and as the median
over pairs (a pair runs back to back, under about the same load). On a busy 2-core machine
single runs swing by 30 % or more; a negative overhead is that noise, not a faster playground.
llama.cpp's KV cache is cleared before every run so that no run reuses a cached prompt.

    .venv/bin/python bench/local_backends.py [--repeats 5] [--tokens 128] [--backends onnx,llamacpp] [--quick]

``--quick`` (1 pair, 16 tokens) checks that it runs; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from playground.backends import local, make_backend  # noqa: E402
from playground.catalog import BUILTIN_CATALOG, read_catalog_file  # noqa: E402
from playground import models, roofline  # noqa: E402
from playground.models import module_installed  # noqa: E402
from playground.request import ChatRequest, build_messages, make_params  # noqa: E402
from playground.runner import Job, Run  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
BACKENDS = ("onnx", "transformers", "llamacpp", "openvino")
THREAD_SWEEP = (1, 2)  # llama.cpp's bare loop runs at each; the playground at its own default
Stamps = tuple[float, list[float]]  # (when the request was handed over, one time per token)


def decode_rate(times: list[float]) -> float | None:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) >= 2 and times[-1] > times[0] else None


# --- bare loops: the least a streaming client of each library does ----------------------
def bare_onnx(loaded: dict[str, Any], request: ChatRequest) -> Stamps:
    og, model, tokenizer = loaded["og"], loaded["model"], loaded["tokenizer"]
    ids = tokenizer.encode(tokenizer.apply_chat_template(json.dumps(request.as_dicts()), add_generation_prompt=True))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + request.params.max_tokens, do_sample=False)
    generator, stream, times = og.Generator(model, params), tokenizer.create_stream(), []
    started = time.perf_counter()
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        now = time.perf_counter()
        if token in loaded["eos"]:
            break
        stream.decode(token)
        times.append(now)
    return started, times


def bare_transformers(loaded: tuple[Any, Any, Any], request: ChatRequest) -> Stamps:
    import torch
    from transformers.generation.streamers import BaseStreamer

    tokenizer, model, _ = loaded  # (tokenizer, model, processor)
    inputs = tokenizer.apply_chat_template(request.as_dicts(), add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    times: list[float] = []

    class Stamper(BaseStreamer):
        prompt_seen = False

        def put(self, value: Any) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            for token in value.reshape(-1).tolist():
                now = time.perf_counter()
                if token not in eos_ids:
                    tokenizer.decode([token], skip_special_tokens=True)
                    times.append(now)

        def end(self) -> None:
            pass

    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=request.params.max_tokens, do_sample=False,
                       streamer=Stamper(), pad_token_id=next(iter(eos_ids)))
    return started, times


def bare_llamacpp(engine: Any, request: ChatRequest, backend: Any, threads: int | None = None) -> Stamps:
    import llama_cpp

    llm = engine.llm
    ids = backend.prompt_ids(engine, request, lambda event: None)
    vocab, times = llm._model.vocab, []
    if threads is not None:  # the playground's next run sets its own count again
        llama_cpp.llama_set_n_threads(llm.ctx, threads, threads)
    llm.reset()
    started = time.perf_counter()
    for token in llm.generate(ids, temp=0.0, top_p=1.0):
        now = time.perf_counter()
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        llm.detokenize([token])
        times.append(now)
        if len(times) >= request.params.max_tokens:
            break
    return started, times


def bare_openvino(pipeline: Any, request: ChatRequest) -> Stamps:
    import openvino_genai as ov

    tokenizer, times = pipeline.tokenizer, []
    prompt = tokenizer.apply_chat_template(request.as_dicts(), add_generation_prompt=True)
    inputs = tokenizer.encode(prompt, add_special_tokens=False)

    class Stamper(ov.StreamerBase):
        def write(self, token: Any) -> Any:
            now = time.perf_counter()
            for token_id in token if isinstance(token, list) else [token]:
                if token_id in pipeline.eos:
                    return ov.StreamingStatus.STOP
                tokenizer.decode([token_id])
                times.append(now)
            return ov.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    config = ov.GenerationConfig()
    config.max_new_tokens, config.do_sample = request.params.max_tokens, False
    started = time.perf_counter()
    pipeline.pipe.generate(inputs, config, Stamper())
    return started, times


# --- one backend, in its own process ---------------------------------------------------
async def measure_one(name: str, repeats: int, tokens: int) -> dict[str, Any]:
    target = read_catalog_file(BUILTIN_CATALOG).get(f"smollm2-{name}")
    backend = make_backend(target)
    request = ChatRequest(build_messages(PROMPT), make_params(temperature=0.0, max_tokens=tokens))

    async def playground() -> tuple[float | None, float | None, int | None]:
        if name == "llamacpp" and local.is_loaded(backend.key):
            (await local.load_shared(backend.key, lambda: None)).llm.reset()
        [column] = [c async for c in Run([Job(target, request)]).frames()][-1]
        if column.status != "done":
            raise SystemExit(f"{name}: {column.status}: {column.error}")
        m = column.metrics()
        if column.server is not None and column.server.threads is not None:
            playground_threads.append(column.server.threads)
        return m.ttft_s, m.decode_tokens_per_s, m.output_tokens

    playground_threads: list[int] = []  # as the engine reports them (llama.cpp: PLAYGROUND_LLAMACPP_THREADS or its default)

    await playground()  # warm-up: loads (and for onnx, may build) the model
    loaded = await local.load_shared(backend.key, lambda: None)
    worker_pid = None
    if name == "onnx":  # the playground's model lives in its own process; the bare loop loads one here
        worker_pid = loaded.pid
        loaded = backend.load_model(models.bundled_onnx_dir())
    # llama.cpp's bare loop runs at each thread count of the sweep and the best one is the bar; the
    # other libraries' bare loops run once a pair, as the library sets itself up
    sweep: tuple[int | None, ...] = THREAD_SWEEP if name == "llamacpp" else (None,)

    def bare_at(threads: int | None) -> Stamps:
        return {
            "onnx": lambda: bare_onnx(loaded, request),
            "transformers": lambda: bare_transformers(loaded, request),
            "llamacpp": lambda: bare_llamacpp(loaded, request, backend, threads),
            "openvino": lambda: bare_openvino(loaded, request),
        }[name]()

    for threads in sweep:
        bare_at(threads)  # warm-up of the bare path too, at each thread count

    async def bare_run(threads: int | None) -> tuple[float | None, float | None, int]:
        started, times = await asyncio.to_thread(bare_at, threads)  # off the loop, as the playground's worker
        return times[0] - started if times else None, decode_rate(times), len(times)

    ours: list[tuple[float | None, float | None, int | None]] = []
    theirs: dict[int | None, list[tuple[float | None, float | None, int]]] = {t: [] for t in sweep}
    for i in range(repeats):  # pairs, in alternating order, so that drift hits both sides
        if i % 2:
            for threads in sweep:
                theirs[threads].append(await bare_run(threads))
            ours.append(await playground())
        else:
            ours.append(await playground())
            for threads in reversed(sweep):
                theirs[threads].append(await bare_run(threads))
    best = lambda runs, i, pick: pick(r[i] for r in runs if r[i] is not None)  # noqa: E731
    by_threads = {t: best(runs, 1, max) for t, runs in theirs.items()}
    top = max(sweep, key=lambda t: by_threads[t] or 0.0)  # the best bare loop is the bar
    pairs = []  # each pair against its best bare run
    for k, o in enumerate(ours):
        bare_best = max((theirs[t][k][1] for t in sweep if theirs[t][k][1]), default=None)
        if o[1] and bare_best:
            pairs.append((bare_best - o[1]) / bare_best * 100)
    return {
        "pair_overhead_pct": statistics.median(pairs) if pairs else None,
        "backend": name,
        "tokens": ours[0][2],
        "bare_tokens": theirs[top][0][2],
        "ttft_s": best(ours, 0, min),
        "bare_ttft_s": best(theirs[top], 0, min),
        "decode": best(ours, 1, max),
        "bare_decode": by_threads[top],
        "threads": playground_threads[-1] if playground_threads else None,
        "bare_threads": top,
        "bare_by_threads": {str(t): rate for t, rate in by_threads.items()} if top is not None else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ceiling_tok_s": roofline_ceiling(target),
        "model_process_rss_mb": peak_rss_mb(worker_pid) if worker_pid else None,
    }


def roofline_ceiling(target: Any) -> float | None:
    """This machine's decode ceiling for the target: measured bandwidth ÷ the weights read a token."""
    ceiling = roofline.for_target(target)
    return ceiling.tokens_per_s if ceiling else None


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a running process, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def available(name: str) -> str | None:
    if name == "llamacpp" and not module_installed("llama_cpp"):
        return "llama_cpp not installed: pip install -r requirements-llamacpp.txt"
    target = read_catalog_file(BUILTIN_CATALOG).get(f"smollm2-{name}")
    state = make_backend(target).availability()
    return None if state.runnable else state.reason


def threads_cell(r: dict[str, Any]) -> str:
    """"1 / 2 (1: 75.3, 2: 90.1 tok/s)": the playground's threads, the best bare loop's, and each
    bare count's best decode; "–" where a library sets its own threads."""
    if r.get("bare_threads") is None:
        return "–"
    sweep = ", ".join(f"{t}: {rate:.1f}" for t, rate in (r.get("bare_by_threads") or {}).items() if rate)
    return f"{r.get('threads') or '?'} / {r['bare_threads']} ({sweep} tok/s)"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| backend | tokens | TTFT playground (s) | TTFT bare (s) | decode tok/s playground "
             "| decode tok/s bare (best) | threads playground / bare | overhead (best) | overhead (median pair) "
             "| roofline playground | roofline bare | peak RSS (MB) | model process peak RSS (MB) |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['backend']} | skipped: {r['skipped']} |||||||||||| ")
            continue
        overhead = (r["bare_decode"] - r["decode"]) / r["bare_decode"] * 100
        worker = f"{r['model_process_rss_mb']:.0f}" if r.get("model_process_rss_mb") else "in process"
        tokens = f"{r['tokens']}" + ("" if r["tokens"] == r["bare_tokens"] else f" (bare {r['bare_tokens']})")
        ceiling = r.get("ceiling_tok_s")
        roof = (f"{r['decode'] / ceiling * 100:.0f} % | {r['bare_decode'] / ceiling * 100:.0f} %" if ceiling
                else "– | –")
        lines.append(f"| {r['backend']} | {tokens} | {r['ttft_s']:.3f} | {r['bare_ttft_s']:.3f} | "
                     f"{r['decode']:.1f} | {r['bare_decode']:.1f} | {threads_cell(r)} | {overhead:+.1f} % | "
                     f"{r['pair_overhead_pct']:+.1f} % | {roof} | {r['peak_rss_mb']:.0f} | {worker} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--quick", action="store_true", help="1 pair of 16 tokens: checks it runs")
    parser.add_argument("--one", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.tokens = 1, 16
    if args.one:
        print(json.dumps(asyncio.run(measure_one(args.one, args.repeats, args.tokens))))
        return 0
    rows = []
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        reason = available(name)
        if reason:
            rows.append({"backend": name, "skipped": reason})
            continue
        print(f"measuring {name}…", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--one", name, "--repeats", str(args.repeats),
                               "--tokens", str(args.tokens)], capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            rows.append({"backend": name, "skipped": (done.stderr.strip().splitlines() or ["failed"])[-1]})
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"SmolLM2-135M-Instruct, greedy, {args.tokens} new tokens, best of {args.repeats}; prompt: {PROMPT!r}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
