"""The project's benchmarks: each measures a part against a baseline in the same run.

Run one with `python -m bench NAME` (or the `mediabot bench-*` commands)."""
