"""Personas and rules as data files, and the loader's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from prompts import PromptError, list_personas, load_persona, load_rules, load_task


def test_the_default_persona_loads_and_renders() -> None:
    persona = load_persona("default")
    text = persona.render(user_name="Ada {user_name}", bot_name="mediabot", rules=load_rules())
    assert "You are mediabot" in text and "Ada {user_name}" in text
    assert "never claim" in text.lower() and "not sure" in text
    assert "@ mentions" in text
    assert {p.name for p in list_personas()} >= {"default", "critic"}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("name: [unclosed\n", "not valid YAML"),
        ("- a list\n", "must be a YAML mapping"),
        ("name: bad\ndescription: d\n", "system: Field required"),
        ("name: bad\ndescription: d\nsystem: hi {secret}\n", "unknown placeholder {secret}"),
        ("name: bad\ndescription: d\nsystem: hi {\n", "bad braces"),
        ("name: other\ndescription: d\nsystem: hi\n", "name is 'other' but the file is bad.yaml"),
        ("name: bad\ndescription: d\nsystem: hi\ncolour: red\n", "colour: Extra inputs"),
    ],
)
def test_a_malformed_persona_is_rejected_with_path_and_reason(
    tmp_path: Path, content: str, reason: str
) -> None:
    (tmp_path / "bad.yaml").write_text(content)
    with pytest.raises(PromptError) as info:
        load_persona("bad", tmp_path)
    assert info.value.path == str(tmp_path / "bad.yaml")
    assert reason in info.value.reason


def test_binary_and_missing_files_are_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PromptError, match="not UTF-8"):
        load_persona("bin", tmp_path)
    with pytest.raises(PromptError, match="no such file"):
        load_persona("missing", tmp_path)


def test_task_templates_load_render_and_refuse_mismatched_fields(tmp_path: Path) -> None:
    task = load_task("summary")
    assert "- (2026-01-01) my dog is Biscuit" in task.render(
        notes="- (2026-01-01) my dog is Biscuit"
    )
    with pytest.raises(KeyError):
        task.render()
    (tmp_path / "bad.yaml").write_text(
        "name: bad\ndescription: d\nfields: [title]\ntemplate: Write about {topic}\n"
    )
    with pytest.raises(PromptError, match=r"uses \['topic'\] but fields lists \['title'\]"):
        load_task("bad", tmp_path)
