"""Loads personas and rules from YAML data files, rejecting a malformed file with its
path and the reason."""

from __future__ import annotations

import string
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PLACEHOLDERS = frozenset({"bot_name", "user_name"})
MAX_FILE_BYTES = 64 * 1024


class PromptError(ValueError):
    """A prompt file is missing or malformed; the message names the file and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _check_placeholders(template: str) -> str:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"bad braces in the template ({exc})") from exc
    unknown = fields - PLACEHOLDERS
    if unknown:
        allowed = ", ".join(sorted("{" + p + "}" for p in PLACEHOLDERS))
        raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}}; allowed: {allowed}")
    return template


class Persona(BaseModel):
    """A persona: who the bot is in a channel."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_-]{1,40}$")
    description: str = Field(min_length=1, max_length=200)
    system: str = Field(min_length=1, max_length=8000)

    _placeholders = field_validator("system")(_check_placeholders)

    def render(self, *, user_name: str, bot_name: str, rules: str = "") -> str:
        """The system prompt for one reply. Values are inserted once, never parsed as
        templates, so a display name with braces stays text. Lines that name the user
        come last, after the rules: every member's prompt then starts with the same
        tokens, which the model's prefix cache computes once for all."""
        values = {"user_name": user_name, "bot_name": bot_name}
        lines = self.system.split("\n")
        shared = [line.format_map(values) for line in lines if "{user_name}" not in line]
        personal = [line.format_map(values) for line in lines if "{user_name}" in line]
        return "\n".join([*shared, *([rules] if rules else []), *personal])


class Task(BaseModel):
    """A task template: a prompt for one job with named fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_-]{1,40}$")
    description: str = Field(min_length=1, max_length=200)
    fields: tuple[str, ...] = ()
    template: str = Field(min_length=1, max_length=8000)

    @model_validator(mode="after")
    def _fields_match(self) -> Task:
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        except ValueError as exc:
            raise ValueError(f"bad braces in the template ({exc})") from exc
        if used != set(self.fields):
            raise ValueError(
                f"the template uses {sorted(used)} but fields lists {sorted(self.fields)}"
            )
        return self

    def render(self, **values: str) -> str:
        missing = set(self.fields) - set(values)
        if missing:
            raise KeyError(f"task {self.name} needs {sorted(missing)}")
        return self.template.format_map({f: values[f] for f in self.fields})


class _Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: str = Field(min_length=1, max_length=4000)


def _read_yaml(source: Traversable | Path) -> dict[str, Any]:
    where = str(source)
    try:
        raw = source.read_bytes()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise PromptError(where, "no such file") from exc
    except OSError as exc:
        raise PromptError(where, f"cannot be read ({exc.strerror})") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise PromptError(where, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PromptError(where, "not UTF-8 text") from exc
    except yaml.YAMLError as exc:
        raise PromptError(where, f"not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise PromptError(where, "must be a YAML mapping")
    return data


def _explain(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "file"
    return f"{field}: {err['msg'].removeprefix('Value error, ')}"


def _persona_dir(directory: Path | None) -> Traversable | Path:
    return directory if directory is not None else resources.files("prompts") / "personas"


def load_persona(name: str, directory: Path | None = None) -> Persona:
    """Load one persona by name, from `directory` or the packaged personas."""
    source = _persona_dir(directory) / f"{name}.yaml"
    data = _read_yaml(source)
    try:
        persona = Persona.model_validate(data)
    except ValidationError as exc:
        raise PromptError(str(source), _explain(exc)) from exc
    if persona.name != name:
        raise PromptError(str(source), f"name is {persona.name!r} but the file is {name}.yaml")
    return persona


def list_personas(directory: Path | None = None) -> list[Persona]:
    """Every persona of a directory (or the packaged ones), by name."""
    base = _persona_dir(directory)
    names = sorted(p.name[:-5] for p in base.iterdir() if p.name.endswith(".yaml"))
    return [load_persona(n, directory) for n in names]


def load_rules(path: Path | None = None) -> str:
    """The rules appended to every persona."""
    source = path if path is not None else resources.files("prompts") / "rules.yaml"
    try:
        return _Rules.model_validate(_read_yaml(source)).rules
    except ValidationError as exc:
        raise PromptError(str(source), _explain(exc)) from exc


def load_task(name: str, directory: Path | None = None) -> Task:
    """Load one task template by name, from `directory` or the packaged tasks."""
    base = directory if directory is not None else resources.files("prompts") / "tasks"
    source = base / f"{name}.yaml"
    try:
        task = Task.model_validate(_read_yaml(source))
    except ValidationError as exc:
        raise PromptError(str(source), _explain(exc)) from exc
    if task.name != name:
        raise PromptError(str(source), f"name is {task.name!r} but the file is {name}.yaml")
    return task
