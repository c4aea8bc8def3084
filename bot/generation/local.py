"""The local backend: a transformers causal LM run off the event loop, streaming
decoded text back to the async caller as it is produced.

Requests wait in a fair queue (bot/generation/queue.py). With `max_batch` above 1 the
admitted ones decode together in the continuous-batching engine
(bot/generation/batch.py); with 1, each runs `generate` in a worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.generation.base import ChatMessage, GenerationError, GenerationParams, GeneratorBusy, Owner
from bot.generation.batch import BatchEngine, BatchRequest, EngineStats
from bot.generation.queue import FairQueue
from bot.generation.tokenizer import ChatTokenizer, load_tokenizer
from bot.generation.weights import (
    Progress,
    int4_cache_file,
    llama_from_directory,
    llama_from_transformers,
    model_dir,
    offline,
    read_int4,
    write_int4,
)
from bot.settings import ModelSettings

if TYPE_CHECKING:
    from bot.generation.llama import LlamaModel

log = logging.getLogger(__name__)


class _Done:
    pass


_DONE = _Done()
Item = str | _Done | BaseException


class _PieceStreamer:
    """Receives token ids from `generate` (in the worker thread) and emits text
    pieces that are complete characters: a multi-byte character split across tokens
    waits for its last token."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        emit: Callable[[Item], None],
        *,
        skip_prompt: bool = True,
    ) -> None:
        self._decode = decode
        self._emit = emit
        self._ids: list[int] = []
        self._sent = ""
        self._prompt_seen = not skip_prompt

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        self.put_ids([int(t) for t in value.reshape(-1).tolist()])

    def put_ids(self, ids: list[int]) -> None:
        self._ids.extend(ids)
        text = self._decode(self._ids)
        if text.endswith("\ufffd"):
            return
        self._flush(text)

    def end(self) -> None:
        self._flush(self._decode(self._ids))

    def _flush(self, text: str) -> None:
        if len(text) > len(self._sent) and text.startswith(self._sent):
            self._emit(text[len(self._sent) :])
        self._sent = text


class LocalGenerator:
    """A Hugging Face causal LM on this machine (CPU, or CUDA when present)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        model: Any = None,
        fast: LlamaModel | Callable[[], LlamaModel] | None = None,
        runner: BatchEngine | None = None,
        eos_ids: Sequence[int] = (),
        context_length: int | None = None,
        concurrency: int = 1,
        max_batch: int = 1,
        queue_max: int = 64,
        per_user: int = 2,
        prefix_mb: float = 0,
    ) -> None:
        """`model` is a transformers model: replies one `generate` at a time, or the
        source of the batch engine's weights; `fast` is the engine's model (or the
        function that loads it, run on the engine's thread) when `max_batch` is above 1.
        A model the engine cannot run is served one reply at a time. `runner`: run
        `generate` on that engine's thread (a twin sharing its weights)."""
        import torch

        from bot.generation.llama import LlamaConfig

        self._model = model
        self._tokenizer = tokenizer
        self.tokens = ChatTokenizer(tokenizer)
        self._torch = torch
        self._runner = runner
        if fast is None and model is not None and max_batch > 1:
            if LlamaConfig.of(model.config.to_dict()) is None:
                log.warning(
                    "%s is not a Llama-architecture model: replies are written one at a "
                    "time (GENERATION_MAX_BATCH is ignored).",
                    type(model).__name__,
                )
                max_batch = 1
            else:
                fast = functools.partial(_engine_model_of, model)
        if fast is None and model is None:
            raise GenerationError("No model to generate with.")
        self._live_waiting = 0
        self._background: set[threading.Event] = set()
        self._preempted: set[threading.Event] = set()
        if model is not None:
            eos_ids = [*eos_ids, *_as_list(model.generation_config.eos_token_id)]
        eos = {tokenizer.eos_token_id, *eos_ids}
        self._eos_ids = sorted(i for i in eos if i is not None)
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self._eos_ids[0]
        self.engine: BatchEngine | None = None
        self.fast: LlamaModel | None = None
        if max_batch > 1 and fast is not None:
            limit = context_length or 1 << 30
            self.engine = BatchEngine(
                fast, eos_ids=self._eos_ids, context_length=limit, max_batch=max_batch,
                prefix_bytes=int(prefix_mb * 2**20),
            )  # fmt: skip
            self.fast = self.engine.model
            slots = max_batch
        else:
            slots = concurrency
        # The model's own window: a converted tokenizer's model_max_length is often a
        # placeholder (2,048 for the embedded model, whose config says 8,192).
        if context_length is None:
            context_length = (
                self.fast.config.context_length
                if self.fast is not None
                else int(model.config.max_position_embeddings)
            )
        self._context_length = context_length
        if self.engine is not None:
            self.engine.context_length = context_length
        self.device = self.fast.device if self.fast is not None else model.device
        self.queue = FairQueue(slots, max_waiting=queue_max, per_user=per_user)
        self._executor = ThreadPoolExecutor(slots, thread_name_prefix="generate")

    @classmethod
    def load(
        cls,
        settings: ModelSettings,
        *,
        concurrency: int = 1,
        max_batch: int = 1,
        queue_max: int = 64,
        per_user: int = 2,
        prefix_mb: float = 0,
        progress: Progress = lambda _: None,
    ) -> LocalGenerator:
        """Load (blocking: call it in a thread). Never downloads: only local files.

        With `max_batch` above 1 and a Llama-architecture model, the batch engine's
        thread reads the weights straight from safetensors and transformers' model is
        not built (faster to start, less memory); only weights in another format are
        loaded through transformers."""
        offline()
        steady_malloc()
        import torch

        from bot.generation.llama import LlamaConfig
        from bot.generation.tuning import choose_ways, cpu_prefers_bf16

        directory = model_dir(settings.path, settings.cache_dir, progress)
        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise GenerationError("MODEL_DEVICE is cuda but no CUDA device is available.")
        dtype = {
            "auto": torch.bfloat16 if device == "cuda" or cpu_prefers_bf16() else torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
            "float32": torch.float32,
        }[settings.dtype]
        options: dict[str, Any] = {
            "concurrency": concurrency, "max_batch": max_batch, "queue_max": queue_max,
            "per_user": per_user, "prefix_mb": prefix_mb,
        }  # fmt: skip

        def transformers_model() -> Any:
            if settings.threads:  # (OpenMP's thread count is set per thread)
                torch.set_num_threads(settings.threads)
            import transformers
            from transformers import AutoModelForCausalLM

            transformers.utils.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
            model = AutoModelForCausalLM.from_pretrained(
                str(directory), dtype=dtype, local_files_only=True
            )
            model.to(device)
            return model.eval()

        built: list[Any] = []

        def engine_model() -> LlamaModel:
            """Runs on the engine's thread."""
            if settings.threads:
                torch.set_num_threads(settings.threads)
            fast = llama_from_directory(directory, dtype, device)
            if fast is None:
                built.append(transformers_model())
                fast = _engine_model_of(built[0])
            if device == "cpu":
                int4 = settings.int4 == "auto" and fast.int4_available()
                kept = int4_cache_file(settings.cache_dir, directory, dtype) if int4 else None
                had = kept is not None and read_int4(fast, kept)
                choose_ways(fast, min(max_batch, 8), settings.cache_dir, int4=int4)
                if kept is not None and fast.int4_rows and not had:
                    write_int4(fast, kept)
            return fast

        try:
            tokenizer = _load_tokenizer(directory)
            if max_batch > 1 and LlamaConfig.of(_config_of(directory)) is not None:
                gen = cls(tokenizer, fast=engine_model, eos_ids=_eos_of(directory), **options)
                gen._model = built[0] if built else None
                return gen
            model = transformers_model()
        except (OSError, ValueError) as exc:
            raise GenerationError(f"Could not load the model in {directory}: {exc}") from exc
        return cls(tokenizer, model=model, **options)

    def engine_stats(self) -> EngineStats | None:
        """What the batch engine has done so far (a copy), or None without one (replies
        written one `generate` at a time)."""
        return self.engine.snapshot() if self.engine is not None else None

    @property
    def context_length(self) -> int:
        return self._context_length

    def neutralise(self, text: str) -> str:
        return self.tokens.neutralise(text)

    def count_tokens(self, text: str) -> int:
        return self.tokens.count_tokens(text)

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        return self.tokens.truncate_tokens(text, max_tokens)

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        return self.tokens.render(messages)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self.tokens.count_prompt_tokens(messages)

    def decode(self, ids: list[int]) -> str:
        return self.tokens.decode(ids)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        *,
        owner: Owner | None = None,
    ) -> AsyncIterator[str]:
        """A live request: it waits its turn in the fair queue (`QueueFull` at once
        when there is no room), and any background generation running is stopped at
        its next token to make room."""
        for stop in self._background:
            self._preempted.add(stop)
            stop.set()
        self._live_waiting += 1
        admitted = False
        try:
            async with self.queue.turn(owner or Owner("local")):
                self._live_waiting -= 1
                admitted = True
                async for piece in self._run(messages, params, threading.Event()):
                    yield piece
        finally:
            if not admitted:
                self._live_waiting -= 1

    async def stream_background(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[str]:
        """Low priority: runs only while no live request waits or runs, and raises
        `GeneratorBusy` (at once, or at the next token) when one does."""
        if self._live_waiting or self.queue.busy:
            raise GeneratorBusy("The model is busy with replies.")
        stop = threading.Event()
        self._background.add(stop)
        try:
            async with self.queue.turn(Owner("background")):
                async for piece in self._run(messages, params, stop):
                    yield piece
        finally:
            self._background.discard(stop)
            preempted = stop in self._preempted
            self._preempted.discard(stop)
        if preempted:
            raise GeneratorBusy("Stopped to make room for a reply.")

    async def _run(
        self, messages: Sequence[ChatMessage], params: GenerationParams, stop: threading.Event
    ) -> AsyncIterator[str]:
        """Generate with a queue slot held; stops the work (at its next token) when the
        caller stops reading."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Item] = asyncio.Queue()

        def emit(item: Item) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while we ran
                loop.call_soon_threadsafe(queue.put_nowait, item)

        prompt = self.render(messages)
        if len(prompt) >= self.context_length:
            raise GenerationError("The conversation is too long for the model's context window.")
        if self.engine is not None:
            streamer = _PieceStreamer(self.decode, emit, skip_prompt=False)

            def done(error: BaseException | None) -> None:
                if error is None:
                    streamer.end()
                emit(error if error is not None else _DONE)

            room = self.context_length - len(prompt)
            self.engine.submit(
                BatchRequest(
                    prompt=prompt,
                    params=params,
                    max_new_tokens=max(1, min(params.max_new_tokens, room)),
                    on_token=lambda token: streamer.put_ids([token]),
                    done=done,
                    stop=stop,
                )
            )
        elif self._runner is not None:
            self._runner.call(functools.partial(self._generate, prompt, params, stop, emit))
        else:
            loop.run_in_executor(self._executor, self._generate, prompt, params, stop, emit)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Done):
                    break
                if isinstance(item, BaseException):
                    log.error("generation failed", exc_info=item)
                    raise GenerationError("The model failed while writing a reply.") from item
                yield item
        finally:
            stop.set()

    def _generate(
        self,
        prompt: list[int],
        params: GenerationParams,
        stop: threading.Event,
        emit: Callable[[Item], None],
    ) -> None:
        torch = self._torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _StopWhenAsked(StoppingCriteria):  # type: ignore[misc]
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        room = self.context_length - len(prompt)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(1, min(params.max_new_tokens, room)),
            "eos_token_id": self._eos_ids,
            "pad_token_id": self._pad_id,
            "repetition_penalty": params.repetition_penalty,
            "streamer": _PieceStreamer(self.decode, emit),
            "stopping_criteria": StoppingCriteriaList([_StopWhenAsked()]),
        }
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k or None,
            )
        try:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            input_ids = torch.tensor([prompt], device=self.device)
            with torch.inference_mode():
                self._model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
                )
        except Exception as exc:
            emit(exc)
            return
        emit(_DONE)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self._executor.shutdown(wait=True, cancel_futures=True)


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


MMAP_THRESHOLD = 8 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def steady_malloc() -> bool:
    """Make the C allocator return large freed blocks to the system (glibc only).

    glibc gives an allocation its own mapping, unmapped when freed, only above a
    threshold that it raises to the size of each such block freed (up to 32 MB). The
    engine frees KV copies of a few MB to tens of MB all the time (cached prefixes,
    rows read out), so after the first, they came from the heap and their memory stayed
    with the process: 8 members talking for 30 s peaked at 1.41 GB against 1.09 GB
    with the threshold held at 8 MB (float32, measured by `python -m bench generation`).
    Blocks below 8 MB (a pass's activations) stay on the heap, reused as before.

    Setting it turns glibc's dynamic thresholds off, and with them the rule that keeps
    the heap's trim threshold at twice the mapping threshold: the trim threshold stayed
    at 128 KB, so the free memory at the heap's top was given back after an operation
    and the next one faulted its pages in again (8 rows decoding at position 600, pass
    after pass: 26,600 page faults a pass, 96 against 52 ms). It is held at
    TRIM_THRESHOLD, as glibc's own rule would hold it. Returns whether the allocator
    took both settings."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # another C library (musl)
        return False
    mapped = mallopt(ctypes.c_int(-3), ctypes.c_int(MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
    trimmed = mallopt(ctypes.c_int(-1), ctypes.c_int(TRIM_THRESHOLD))  # M_TRIM_THRESHOLD
    return bool(mapped and trimmed)


def _load_tokenizer(directory: Path) -> Any:
    tokenizer = load_tokenizer(directory)
    if tokenizer.chat_template is None:
        raise GenerationError(f"The model in {directory} has no chat template.")
    return tokenizer


def _engine_model_of(model: Any) -> LlamaModel:
    fast = llama_from_transformers(model)
    if fast is None:
        raise GenerationError(f"{type(model).__name__} is not a Llama-architecture model.")
    return fast


def _config_of(directory: Path) -> dict[str, Any]:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _eos_of(directory: Path) -> list[int]:
    """The end tokens named in the model's generation_config.json."""
    try:
        config = json.loads((directory / "generation_config.json").read_text())
    except (OSError, ValueError):
        return []
    return _as_list(config.get("eos_token_id"))
