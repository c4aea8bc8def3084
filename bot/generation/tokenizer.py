"""The served model's tokenizer and chat template: counting, cutting and rendering
prompts exactly as the model will read them. Loads in a fraction of a second, without
the weights, so tools that only count (the memory benchmark) need no model."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memory.context import ChatMessage

# Shown where a special token's text would otherwise be read as the token itself.
WORD_JOINER = "\u2060"


class ChatTokenizer:
    """Wraps a Hugging Face tokenizer that has a chat template."""

    def __init__(self, tokenizer: Any, context_length: int | None = None) -> None:
        self.hf = tokenizer
        self._context_length = context_length
        specials = sorted(
            set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()),
            key=len,
            reverse=True,
        )
        self._special_re = re.compile("|".join(re.escape(s) for s in specials if len(s) > 1))
        self._counts: dict[str, int] = {}

    @classmethod
    def load(cls, directory: Path) -> ChatTokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        try:
            config = json.loads((directory / "config.json").read_text())
            window = int(config["max_position_embeddings"])
        except (OSError, ValueError, KeyError, TypeError):
            window = None
        return cls(tokenizer, window)

    @property
    def context_length(self) -> int:
        """The model's window, from its config; else the tokenizer's own idea of it."""
        if self._context_length:
            return self._context_length
        limit = int(self.hf.model_max_length or 0)
        return limit if 0 < limit < 10**7 else 2048

    def neutralise(self, text: str) -> str:
        """Special-token text typed by a user (`<|im_start|>`) stays text: a word
        joiner after its first character keeps the tokenizer from reading a token."""
        return self._special_re.sub(lambda m: m.group()[0] + WORD_JOINER + m.group()[1:], text)

    def count_tokens(self, text: str) -> int:
        cached = self._counts.get(text)
        if cached is not None:
            return cached
        ids = self.hf(self.neutralise(text), add_special_tokens=False)["input_ids"]
        if len(text) <= 4096:  # system prompts and headers repeat: remember them
            if len(self._counts) > 4096:
                self._counts.clear()
            self._counts[text] = len(ids)
        return len(ids)

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        if len(text) <= 4096 and self.count_tokens(text) <= max_tokens:
            return self.neutralise(text)  # the count is cached: no second pass
        text = self.neutralise(text)
        enc = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= max_tokens:
            return text
        if max_tokens <= 0:
            return ""
        end = int(enc["offset_mapping"][max_tokens - 1][1])
        return text[:end]

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The prompt's token ids under the model's chat template."""
        safe = [{"role": m["role"], "content": self.neutralise(m["content"])} for m in messages]
        out = self.hf.apply_chat_template(safe, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return [int(i) for i in ids]

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.render(messages))

    def decode(self, ids: list[int]) -> str:
        text: str = self.hf.decode(ids, skip_special_tokens=True)
        return text
