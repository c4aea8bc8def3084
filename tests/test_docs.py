"""docs/settings.md and .env.example name every setting; CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic_settings import BaseSettings

from bot.settings import (
    CatalogSettings,
    DiscordSettings,
    GenerationSettings,
    MemorySettings,
    ModelSettings,
    ModerationSettings,
    RateLimitSettings,
    RedisSettings,
    RemoteSettings,
)

REPO = Path(__file__).resolve().parent.parent
SECTIONS: list[type[BaseSettings]] = [
    RedisSettings,
    ModelSettings,
    GenerationSettings,
    MemorySettings,
    DiscordSettings,
    RateLimitSettings,
    ModerationSettings,
    CatalogSettings,
    RemoteSettings,
]


def all_setting_names() -> list[str]:
    names = ["PERSONA", "LOG_LEVEL"]
    for section in SECTIONS:
        prefix = section.model_config.get("env_prefix", "")
        names += [(prefix + field).upper() for field in section.model_fields]
    return names


def test_every_setting_is_documented() -> None:
    settings_doc = (REPO / "docs" / "settings.md").read_text()
    example = (REPO / ".env.example").read_text()
    for name in all_setting_names():
        assert f"`{name}`" in settings_doc, name
        assert re.search(rf"^(# )?{name}=", example, re.MULTILINE), name


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test" in readme and "exec scripts/test" in ci
