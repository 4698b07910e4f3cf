"""What the backends that open a GGUF file themselves share (llama.cpp, OpenVINO): where the model
is (bundled, on disk, or fetched from the hub with progress) and the stream around one loaded,
shared model. A subclass fills in ``_hub_model``, ``_hub_missing``, ``_load`` and ``_generate``."""

from __future__ import annotations

import threading
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

from playground import models
from playground.backends import local
from playground.errors import BackendError, ErrorKind

if TYPE_CHECKING:
    from playground.events import Event
    from playground.request import ChatRequest


class GgufBackend(local.LocalBackend):
    Options = local.GgufOptions

    def _hub_model(self, local_only: bool) -> Path | None:
        """The model in the hub cache (fetched first unless ``local_only``), or None."""
        raise NotImplementedError

    def _hub_missing(self) -> str:
        """What the column says when the hub repository holds no model this backend can open."""
        raise NotImplementedError

    def _load(self, path: Path | None) -> Any:
        """The loaded model (in a thread, once per process); it carries ``load_s``."""
        raise NotImplementedError

    def _generate(self, model: Any, request: ChatRequest, emit: local.Emit, stop: threading.Event,
                  load_s: float) -> None:
        raise NotImplementedError

    def _local_path(self) -> Path:
        path = Path(self.target.model).expanduser()
        return path / self.target.options.gguf_file if self.target.options.gguf_file else path

    async def _model_path(self) -> AsyncIterator[str | Path]:
        """Progress lines, then where the model is."""
        options = self.target.options
        if options.source == "bundled":
            folder = models.bundled_dir()
            if folder is None:
                raise BackendError(ErrorKind.UNAVAILABLE, models.INSTALL_HINT)
            yield folder / (options.gguf_file or models.BUNDLED_GGUF)
        elif options.source == "hub":
            async for item in local.fetch_from_hub(self._hub_model, self.target, self._hub_missing()):
                yield item
        else:
            yield self._local_path()

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if request.images:  # the runner sends a text-only target none; a direct caller is told
            raise BackendError(ErrorKind.BAD_REQUEST, f"{self.target.label} is a text-only target: it cannot take images")
        waited_for_load = not local.is_loaded(self.key)  # only a run that waited reports the load time
        loaded: list[Any] = []
        async for progress in local.find_and_load(self.key, self.target, self._model_path(), self._load, loaded):
            yield progress
        model = loaded[0]
        load_s = model.load_s if waited_for_load else 0.0

        def work(emit: local.Emit, stop: threading.Event) -> None:
            self._generate(model, request, emit, stop, load_s)

        async with aclosing(local.stream_from_thread(work)) as events:  # closing this closes it: stops the thread
            async for event in events:
                yield event
