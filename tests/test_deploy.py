"""Self-hosting files: the compose files pass a real compose parser and say what the
README promises; the image installs exactly as the tests and CI do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.settings import DEFAULT_TITLES, parse_shards

REPO = Path(__file__).resolve().parent.parent


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "docker-compose is needed to validate docker-compose.yml: scripts/setup.sh dev "
        "installs it as root, or apt-get install docker-compose."
    )


def compose_config(tmp_path: Path, *files: str) -> dict[str, Any]:
    for name in files:
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    args = [*compose_command(), *(a for f in files for a in ("-f", f))]
    subprocess.run([*args, "config", "-q"], cwd=tmp_path, check=True, timeout=60)
    out = subprocess.run(
        [*args, "config"], cwd=tmp_path, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    config: dict[str, Any] = yaml.safe_load(out)
    return config


def test_compose_file_is_valid_and_durable(tmp_path: Path) -> None:
    config = compose_config(tmp_path, "docker-compose.yml")
    redis, bot = config["services"]["redis"], config["services"]["bot"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["image"].startswith("redis:")
    assert any(str(v).startswith("redis-data:/data") for v in redis["volumes"])
    assert bot["depends_on"]["redis"]["condition"] == "service_healthy"
    assert bot["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    # The bot's health check asks its own /health on the metrics port.
    port = bot["environment"]["METRICS_PORT"]
    assert f"http://127.0.0.1:{port}/health" in " ".join(bot["healthcheck"]["test"])
    assert any(str(v).startswith("model-cache:/app/models") for v in bot["volumes"])
    assert bot["restart"] == redis["restart"] == "unless-stopped"
    assert set(config["volumes"]) == {"redis-data", "model-cache"}
    source = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert source["services"]["bot"]["env_file"] == ".env"


def test_the_shards_override_runs_every_shard_once_over_two_processes(tmp_path: Path) -> None:
    config = compose_config(tmp_path, "docker-compose.yml", "docker-compose.shards.yml")
    bots = [s for name, s in config["services"].items() if name.startswith("bot")]
    assert len(bots) == 2
    counts = {int(b["environment"]["DISCORD_SHARD_COUNT"]) for b in bots}
    assert len(counts) == 1
    ids = [i for b in bots for i in parse_shards(b["environment"]["DISCORD_SHARD_IDS"])]
    assert sorted(ids) == list(range(counts.pop()))  # every shard, once
    for b in bots:  # the same Redis, health check and model cache as the one process
        assert b["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert "/health" in " ".join(b["healthcheck"]["test"])
        assert any(str(v).startswith("model-cache:/app/models") for v in b["volumes"])
        assert b["depends_on"]["redis"]["condition"] == "service_healthy"


def test_gpu_override_asks_for_a_gpu(tmp_path: Path) -> None:
    config = compose_config(tmp_path, "docker-compose.yml", "docker-compose.gpu.yml")
    bot = config["services"]["bot"]
    assert bot["environment"]["MODEL_DEVICE"] == "cuda"
    devices = bot["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_dockerfile_installs_like_ci_and_runs_as_a_user() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    runs = [line for line in lines if line.startswith("RUN ")]
    assert "RUN scripts/setup.sh" in runs  # the same install as scripts/test and CI
    assert "RUN .venv/bin/python -m bot prepare-model" in runs
    assert lines[0].startswith("# ") and any(
        line.startswith("FROM python:3.11-slim") for line in lines
    )
    users = [line for line in lines if line.startswith("USER ")]
    assert users == ["USER mediabot"]
    assert lines.index("USER mediabot") < lines.index("RUN scripts/setup.sh")
    assert 'CMD [".venv/bin/python", "-m", "bot", "run"]' in lines
    # Every package pyproject.toml ships is in the image.
    for package in ("bot", "memory", "prompts", "bench"):
        assert f"COPY --chown=mediabot:mediabot {package} ./{package}" in lines


def test_the_image_ships_the_default_catalog() -> None:
    """The settings' default catalog path must exist inside the image too."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY --chown=mediabot:mediabot data/catalog ./data/catalog" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "data" not in ignored and "!data/catalog" in ignored
    assert DEFAULT_TITLES.relative_to(REPO).as_posix() == "data/catalog/netflix_titles.csv"
