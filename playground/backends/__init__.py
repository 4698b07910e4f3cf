"""Explicit registry from a catalog's ``backend:`` name to its class, imported lazily.

Importing this package imports no backend library: a page load that uses no local
model never imports torch, transformers or onnxruntime_genai.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playground.backends.base import Backend
    from playground.catalog import Target

REGISTRY: dict[str, str] = {
    "openai": "playground.backends.openai_compat:OpenAICompatBackend",
    "transformers": "playground.backends.hf_transformers:TransformersBackend",
    "onnx": "playground.backends.ort_genai:OrtGenAIBackend",
    "ollama": "playground.backends.ollama_native:OllamaBackend",
    "llamacpp": "playground.backends.llama_cpp:LlamaCppBackend",
    "openvino": "playground.backends.openvino:OpenVinoBackend",
}


def backend_class(name: str) -> type[Backend]:
    module_name, _, class_name = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_backend(target: Target) -> Backend:
    return backend_class(target.backend)(target)


@functools.cache
def local_backends() -> frozenset[str]:
    """The backends that run a model in this app: their catalog fields are ``LocalOptions``."""
    from playground.backends.local import LocalOptions

    return frozenset(n for n in REGISTRY if issubclass(backend_class(n).Options, LocalOptions))


@functools.cache
def http_backends() -> frozenset[str]:
    """The backends that talk to a server: their catalog fields are ``HttpOptions``."""
    from playground.backends.base import HttpOptions

    return frozenset(n for n in REGISTRY if issubclass(backend_class(n).Options, HttpOptions))
