"""What a run asks of every target: messages and generation parameters, validated."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from playground.images import PreparedImage
    from playground.secrets import Credentials

MAX_PROMPT_CHARS = 100_000
MAX_SYSTEM_CHARS = 20_000
MAX_CONVERSATION_CHARS = 200_000  # what a request may carry in all, whatever the target
CHARS_PER_TOKEN = 3  # a cautious rate for fitting text into a context length (English is about 4)
MAX_NEW_TOKENS_LIMIT = 8192


class GenerationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str
    images: tuple[PreparedImage, ...] = ()  # only user messages carry them


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    params: GenerationParams = field(default_factory=GenerationParams)
    credentials: Credentials | None = field(default=None, repr=False, compare=False)  # a visitor's own keys

    def as_dicts(self) -> list[dict[str, str]]:
        """Text only: images are never in here (each backend shapes them its own way)."""
        return [{"role": m.role, "content": m.content} for m in self.messages]

    @property
    def images(self) -> tuple[PreparedImage, ...]:
        """Every image in the conversation, in order."""
        return tuple(image for m in self.messages for image in m.images)

    def without_images(self) -> ChatRequest:
        return replace(self, messages=tuple(replace(m, images=()) for m in self.messages))

    def map_images(self, change: Callable[[PreparedImage], PreparedImage]) -> ChatRequest:
        return replace(self, messages=tuple(
            replace(m, images=tuple(change(i) for i in m.images)) if m.images else m for m in self.messages))


class InputError(ValueError):
    """Bad user input, with a message fit to show as is."""


def make_params(**values: object) -> GenerationParams:
    """Build parameters, turning pydantic's report into one readable line."""
    try:
        return GenerationParams(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "parameters"
            parts.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise InputError("; ".join(parts)) from None


def build_messages(
    prompt: str, system: str | None = None, history: list[tuple[str, str]] | None = None,
    images: tuple[PreparedImage, ...] = (),
) -> tuple[Message, ...]:
    """Validate the prompt and assemble a conversation (history is (user, assistant) pairs);
    ``images`` go with this turn's prompt."""
    if prompt is None or not prompt.strip():
        raise InputError("The prompt is empty: type something to send.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(
            f"The prompt is {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}."
        )
    if system and len(system) > MAX_SYSTEM_CHARS:
        raise InputError(f"The system prompt is {len(system):,} characters; the limit is {MAX_SYSTEM_CHARS:,}.")
    messages: list[Message] = []
    if system and system.strip():
        messages.append(Message("system", system.strip()))
    for user, assistant in history or []:
        messages.append(Message("user", user))
        messages.append(Message("assistant", assistant))
    messages.append(Message("user", prompt, tuple(images)))
    return tuple(messages)


def fit_history(history: list[tuple[str, str]], prompt: str, system: str | None, max_tokens: int,
                context_length: int | None) -> tuple[list[tuple[str, str]], str | None]:
    """The most recent turns that fit beside the prompt, the system prompt and the answer's room,
    and a notice when earlier ones were left out (never a silent cut)."""
    budget = MAX_CONVERSATION_CHARS
    why = f"the conversation is over {MAX_CONVERSATION_CHARS:,} characters"
    if context_length:
        by_context = (context_length - max_tokens) * CHARS_PER_TOKEN
        if by_context < budget:
            budget, why = by_context, f"the conversation would not fit this target's context of {context_length:,} tokens"
    budget -= len(prompt) + len(system or "")
    kept: list[tuple[str, str]] = []
    used = 0
    for user, assistant in reversed(history):
        used += len(user) + len(assistant)
        if used > budget:
            break
        kept.append((user, assistant))
    kept.reverse()
    dropped = len(history) - len(kept)
    if not dropped:
        return kept, None
    turns = "the earliest turn was" if dropped == 1 else f"the {dropped} earliest turns were"
    return kept, f"{turns} left out: {why}"
