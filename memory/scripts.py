"""Loading the Lua scripts that make multi-key writes atomic, for the store and for
every feature that keeps state in Redis.

A feature's scripts sit next to it, in a `lua/` folder of its package: the store's
in `memory/lua/`, moderation's and the rate limit's in `bot/moderation/lua/`, the
catalog's and trivia's in `bot/media/lua/`, the leases' in `bot/lua/`. Each caller
registers the text it loads on its own Redis client, so every script is registered
where it is used; on a Redis Cluster each must keep to one hash slot (see
`memory/keys.py`; tests/test_cluster.py checks every call site).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources


def load_script(package: str, name: str, *, helpers: Sequence[str] = ()) -> str:
    """The text of `<package>/lua/<name>.lua`, after the helper files of the same folder
    named in `helpers` (e.g. `_index`), in their order."""
    folder = resources.files(package) / "lua"
    return "".join(
        (folder / f"{part}.lua").read_text(encoding="utf-8") for part in (*helpers, name)
    )
