"""The served model's tokenizer and chat template: counting, cutting and rendering
prompts exactly as the model will read them. Loads in a fraction of a second, without
the weights, so tools that only count (the memory benchmark) need no model."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot.generation.base import ChatMessage

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
        tokenizer = load_tokenizer(directory)
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


class FastTokenizer:
    """The subset of a Hugging Face tokenizer that `ChatTokenizer` and the generator
    use, read straight from a model directory's `tokenizer.json` (the `tokenizers`
    library) and chat template (rendered with Jinja as transformers renders it),
    without importing transformers: loading takes a tenth of a second instead of one
    and a half. The tests compare it with transformers' tokenizer."""

    def __init__(self, tokenizer: Any, template: Any, config: dict[str, Any], source: str) -> None:
        self._tok = tokenizer
        self._template = template
        self.chat_template = source
        added = tokenizer.get_added_tokens_decoder()
        self._added = {token.content: i for i, token in added.items()}
        named = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                named[key] = value
        self._named = named
        self.all_special_tokens = list(
            dict.fromkeys([*named.values(), *(t.content for t in added.values() if t.special)])
        )
        self.eos_token_id = self.convert_tokens_to_ids(named.get("eos_token"))
        self.pad_token_id = self.convert_tokens_to_ids(named.get("pad_token"))
        self.model_max_length = int(config.get("model_max_length") or 0)
        self._clean_up = bool(config.get("clean_up_tokenization_spaces", False))

    @classmethod
    def load(cls, directory: Path) -> FastTokenizer | None:
        """The directory's tokenizer, or None when it has no `tokenizer.json` or its
        chat template needs more than plain Jinja (transformers' tokenizer is used)."""
        path = directory / "tokenizer.json"
        try:
            config = json.loads((directory / "tokenizer_config.json").read_text())
        except (OSError, ValueError):
            config = {}
        template_file = directory / "chat_template.jinja"
        source = (
            template_file.read_text() if template_file.is_file() else config.get("chat_template")
        )
        if not path.is_file() or not isinstance(source, str) or config.get("do_lower_case"):
            return None
        import jinja2
        from tokenizers import Tokenizer

        try:
            template = _jinja().from_string(source)
            tokenizer = Tokenizer.from_file(str(path))
        except (jinja2.TemplateError, ValueError, OSError):
            return None
        return cls(tokenizer, template, config, source)

    def __call__(
        self, text: str, *, add_special_tokens: bool = False, return_offsets_mapping: bool = False
    ) -> dict[str, Any]:
        enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
        out: dict[str, Any] = {"input_ids": enc.ids}
        if return_offsets_mapping:
            out["offset_mapping"] = enc.offsets
        return out

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool, tokenize: bool
    ) -> Any:
        text = self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
            documents=None, **self._named,
        )  # fmt: skip
        if not tokenize:
            return text
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        text: str = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        if self._clean_up:
            for before, after in (
                (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
            ):  # fmt: skip
                text = text.replace(before, after)
        return text

    @property
    def all_special_ids(self) -> list[int]:
        ids = (self.convert_tokens_to_ids(t) for t in self.all_special_tokens)
        return [i for i in ids if i is not None]

    def get_added_vocab(self) -> dict[str, int]:
        return dict(self._added)

    def convert_tokens_to_ids(self, token: str | None) -> int | None:
        if token is None:
            return None
        found: int | None = self._tok.token_to_id(token)
        return found


def _jinja() -> Any:
    """A sandboxed Jinja environment set up as transformers sets up chat templates."""
    from datetime import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:  # fmt: skip
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)  # fmt: skip

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def load_tokenizer(directory: Path) -> Any:
    """The model directory's tokenizer: `FastTokenizer` when it can read it, else
    transformers' own."""
    fast = FastTokenizer.load(directory)
    if fast is not None:
        return fast
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
