"""First load converts the embedded GGUF into a cache, says so, and never again."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.generation.base import GenerationError
from bot.generation.weights import cached_model_dir, embedded_gguf, is_converted, model_dir


def test_first_use_converts_with_a_progress_line_then_reuses_the_cache(tmp_path: Path) -> None:
    said: list[str] = []
    path = model_dir(None, tmp_path, said.append)
    assert path == cached_model_dir(tmp_path)
    assert is_converted(path, embedded_gguf())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in path.iterdir()
    }
    assert len(said) == 1 and "first use" in said[0]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    said.clear()
    assert model_dir(None, tmp_path, said.append) == path
    assert said == []


def test_a_model_path_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GenerationError, match=r"no config\.json"):
        model_dir(tmp_path, tmp_path, lambda _: None)
