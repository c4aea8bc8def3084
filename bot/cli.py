"""What the command lines share (`python -m bot`, `python -m bench`): the settings read
from the environment, logging, and the failures a user can fix told in one sentence
with an exit status instead of a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pydantic import ValidationError

from bot.context.build import ContextError
from bot.generation.base import GenerationError
from bot.metrics import MetricsUnavailable
from bot.settings import Settings, describe_error
from memory.connection import RedisUnavailable
from memory.errors import MemoryUnavailable
from prompts import PromptError

EXIT_SETTINGS = 2
EXIT_UNAVAILABLE = 1


def progress(text: str) -> None:
    """A step the user waits for, on its own line of stderr."""
    print(text, file=sys.stderr, flush=True)


def run_command(action: Callable[[Settings], int]) -> int:
    """Read the settings, set up logging, and run `action`; its exit status, or the
    one for a problem the user can fix (told on stderr)."""
    try:
        settings = Settings.from_env()
    except ValidationError as exc:
        print(describe_error(exc), file=sys.stderr)
        return EXIT_SETTINGS
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return action(settings)
    except (PromptError, ContextError) as exc:
        print(f"Configuration problem: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    except (RedisUnavailable, GenerationError, MemoryUnavailable, MetricsUnavailable) as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the line the ^C was echoed on
        return 130
