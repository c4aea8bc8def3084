"""Everything mediabot keeps in Redis: turns, context windows, export and forget."""
