"""Personas and task templates as data files, with a typed loader."""

from prompts.loader import (
    Persona,
    PromptError,
    Task,
    list_personas,
    load_persona,
    load_rules,
    load_task,
)

__all__ = [
    "Persona",
    "PromptError",
    "Task",
    "list_personas",
    "load_persona",
    "load_rules",
    "load_task",
]
