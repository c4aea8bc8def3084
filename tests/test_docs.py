"""docs/settings.md and .env.example name every setting; CI runs the README's test command;
every relative link in README.md and docs/ points at a file and heading that exist."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from pydantic_settings import BaseSettings

from bot.settings import Settings

REPO = Path(__file__).resolve().parent.parent
# Every section of Settings, so a new one cannot be left out of the docs.
SECTIONS: list[type[BaseSettings]] = [
    field.annotation
    for field in Settings.model_fields.values()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings)
]


def all_setting_names() -> list[str]:
    names = ["PERSONA", "LOG_LEVEL"]
    for section in SECTIONS:
        prefix = section.model_config.get("env_prefix", "")
        names += [(prefix + field).upper() for field in section.model_fields]
    return names


def test_every_settings_section_is_checked() -> None:
    assert len(SECTIONS) == 11 and {s.__name__ for s in SECTIONS} >= {
        "RedisSettings", "GroundingSettings", "CatalogSettings", "RemoteSettings"
    }  # fmt: skip


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


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def anchors(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens,
    a repeated heading gets -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", markdown.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_relative_links_resolve() -> None:
    for doc in doc_files():
        text = FENCE.sub("", doc.read_text())
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # an absolute URL
            path, _, anchor = unquote(target).partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            assert linked.exists(), f"{doc.relative_to(REPO)}: {target}"
            if anchor:
                assert linked.suffix == ".md", f"{doc.relative_to(REPO)}: {target}"
                assert anchor in anchors(linked), f"{doc.relative_to(REPO)}: {target}"


def test_the_readme_stays_a_short_front_door() -> None:
    """Quick start first, details in docs/: the README stays under 12 KB."""
    readme = (REPO / "README.md").read_bytes()
    assert len(readme) < 12_000
    text = readme.decode()
    assert text.index("scripts/chat") < text.index("## On Discord")  # the quick start first
