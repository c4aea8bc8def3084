"""The `Generator` protocol every backend implements, its parameters, and the types it
shares with the rest of the bot: a chat message and what counts tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

# One message of a chat prompt: {"role": "system" | "user" | "assistant", "content": ...}.
ChatMessage: TypeAlias = dict[str, str]


class TokenCounter(Protocol):
    """What prompt assembly needs of a model: its tokenizer and its chat template."""

    def count_tokens(self, text: str) -> int: ...

    def truncate_tokens(self, text: str, max_tokens: int) -> str: ...

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int: ...


class GenerationError(Exception):
    """Generation failed; the message is one sentence that can be shown to a user."""


class GeneratorBusy(GenerationError):
    """A background generation was refused or stopped because a live request needs the
    model: background work must never delay a reply."""


@dataclass(frozen=True, slots=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_settings(cls, gen: Any, max_new_tokens: int | None = None) -> GenerationParams:
        """The sampling settings (GENERATION_*), with another reply length if given."""
        return cls(
            max_new_tokens=max_new_tokens or gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            top_k=gen.top_k,
            repetition_penalty=gen.repetition_penalty,
            seed=gen.seed,
        )


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose request it is, for the fair queue; `on_position` hears its place in line
    (1 is next) while it waits, and 0 when it starts."""

    user: str
    guild: str | None = None
    on_position: Callable[[int], None] | None = field(default=None, compare=False)


@runtime_checkable
class Generator(Protocol):
    """A chat model: streams a reply to a list of chat messages, counts tokens."""

    @property
    def context_length(self) -> int: ...

    def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        *,
        owner: Owner | None = None,
    ) -> AsyncIterator[str]:
        """Yield text pieces as they are decoded; stop at the end token or
        `max_new_tokens`. Closing the iterator early cancels the generation. `owner`
        places the request in the backend's fair queue, if it has one."""
        ...

    def stream_background(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[str]:
        """Like `stream`, at low priority: raises `GeneratorBusy` rather than delay a
        live request."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def truncate_tokens(self, text: str, max_tokens: int) -> str: ...

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int: ...
