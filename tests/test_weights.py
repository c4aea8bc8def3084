"""First load converts the embedded GGUF into a cache, says so in one line (and
nothing else on the terminal), and never again."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from bot.generation.base import GenerationError
from bot.generation.weights import (
    cached_model_dir,
    embedded_gguf,
    is_converted,
    model_dir,
    quiet_transformers,
)

# What transformers showed while converting, before it was kept quiet: tqdm's bars
# ("Converting and de-quantizing GGUF tensors...: 100%|####| 272/272") and a note that
# the GGUF kernels compute in float32.
NOISE = ("%|", "it/s]", "GGUF", "float32", "Warning")


def test_first_use_converts_with_a_progress_line_then_reuses_the_cache(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    said: list[str] = []
    path = model_dir(None, tmp_path, said.append)
    out, err = capfd.readouterr()
    assert not [n for n in NOISE if n in out + err], out + err
    assert path == cached_model_dir(tmp_path)
    assert is_converted(path, embedded_gguf())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in path.iterdir()
    }
    assert len(said) == 1 and "once" in said[0]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    said.clear()
    assert model_dir(None, tmp_path, said.append) == path
    assert said == []


def test_a_model_path_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GenerationError, match=r"no config\.json"):
        model_dir(tmp_path, tmp_path, lambda _: None)


def test_the_quiet_is_scoped_and_lifted_by_debug_logging(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from transformers.utils import logging as hf_logging

    def noise() -> None:
        hf_logging.get_logger("transformers.demo").warning("a note on GGUF kernels")
        for _ in hf_logging.tqdm(range(3), desc="Loading weights"):
            pass
        warnings.warn("a library's warning", UserWarning, stacklevel=1)

    # transformers' own handler writes to the stream it was created with (which one
    # depends on the tests before), so its notes are read from a handler of our own on
    # its loggers; the bar and the warning go to stderr.
    notes: list[str] = []
    heard = logging.Handler()
    heard.emit = lambda record: notes.append(record.getMessage())  # type: ignore[method-assign]
    library = hf_logging.get_logger("transformers")
    library.addHandler(heard)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_warning()  # (loading a model elsewhere may have lowered it)
    try:
        with quiet_transformers():
            noise()
        assert notes == []
        err = capfd.readouterr().err
        assert "Loading weights" not in err and "a library's warning" not in err
        assert hf_logging.get_verbosity() == hf_logging.WARNING  # as it was, after
        assert hf_logging.is_progress_bar_enabled() == bars
        with (
            caplog.at_level(logging.DEBUG, logger="bot.generation.weights"),  # LOG_LEVEL=DEBUG
            quiet_transformers(),
            pytest.warns(UserWarning),
        ):
            noise()
        assert notes == ["a note on GGUF kernels"]
    finally:
        library.removeHandler(heard)
        hf_logging.set_verbosity(verbosity)
