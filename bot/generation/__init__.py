"""Text generation behind one protocol: the local transformers backend, later others."""

from bot.generation.base import GenerationError, GenerationParams, Generator

__all__ = ["GenerationError", "GenerationParams", "Generator"]
