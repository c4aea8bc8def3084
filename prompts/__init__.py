"""Personas and task templates as data files, with a typed loader."""

from prompts.loader import Persona, PromptError, list_personas, load_persona, load_rules

__all__ = ["Persona", "PromptError", "list_personas", "load_persona", "load_rules"]
