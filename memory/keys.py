"""The Redis key schema, in one place.

Every key of one user carries the hash tag `{u<user>}`, so all of a user's keys, in
every scope, share one Redis Cluster slot: the append (data and user index together)
and `/forget` stay single atomic scripts on a cluster too. The scope, a guild or the
user's DMs, is the next part of the key, so nothing said in one server is read in
another:

    mb:{u<user>}:index             SET of every key written for this user
    mb:{u<user>}:g<guild>:turns    ZSET turn id -> sequence number (order)
    mb:{u<user>}:g<guild>:turn     HASH turn id -> turn record (JSON)
    mb:{u<user>}:g<guild>:msg      HASH Discord/terminal message id -> turn id
    mb:{u<user>}:g<guild>:seq      STRING last turn id
    mb:{u<user>}:g<guild>:terms    HASH turn id -> "<u|a> <time> <tokens> <search terms>"
    mb:{u<user>}:g<guild>:postings HASH search term -> ids of the user turns holding it
    mb:{u<user>}:g<guild>:stats    HASH docs, terms: how many user turns and terms indexed
    mb:{u<user>}:g<guild>:profile  HASH fact field -> fact (JSON, with its source message)
    mb:{u<user>}:g<guild>:summary  STRING rolling summary (JSON: text, covered turns, version)
    mb:{u<user>}:g<guild>:taste    HASH "<like|dislike|seen>:<genre|title|person>:<key>" -> item
    mb:{u<user>}:g<guild>:story    STRING the interactive story in progress (JSON)
    mb:{u<user>}:g<guild>:lock     STRING upkeep lock token (short TTL, not indexed)
    mb:{u<user>}:dm:...            the same for direct messages

Per-server settings that admins change live under the server's own tag:

    mb:{g<guild>}:chat_channels    SET channel ids where no mention is needed
    mb:{g<guild>}:personas         HASH channel id -> persona name
    mb:{g<guild>}:trivia_board     ZSET member id -> trivia points
    mb:{g<guild>}:trivia:<id>      HASH one question: answer, deadline, options (expires)
    mb:{g<guild>}:trivia:<id>:answered  SET members who answered it

The media catalog is shared by the whole deployment:

    mb:{catalog}:titles            HASH title id -> title (JSON)
    mb:{catalog}:meta              HASH version, source, imported_at

What the bot's processes share while they run (leases that run out, never indexed):

    mb:{u<user>}:inflight          ZSET request id -> lease end (ms): a member's replies
                                   generating now, in every process
    mb:{deploy}:remote             ZSET request id -> lease end: requests at the model
                                   server now, from every process
    mb:{deploy}:identify:<bucket>  STRING a shard's identify, held five seconds
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def encode_part(raw: str) -> str:
    """Escape an id so keys stay well formed: braces, colons, spaces and the rest
    become %XX (UTF-8), and the mapping is one to one."""
    if not raw:
        raise ValueError("an id may not be empty")
    return _SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), raw)


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a conversation happens: one guild, or direct messages (guild_id None)."""

    guild_id: str | None = None

    @property
    def name(self) -> str:
        return "dm" if self.guild_id is None else "g" + encode_part(self.guild_id)

    @classmethod
    def from_name(cls, name: str) -> Scope:
        if name == "dm":
            return cls(None)
        if not name.startswith("g") or len(name) < 2:
            raise ValueError(f"not a scope name: {name!r}")
        return cls(_decode_part(name[1:]))

    def __str__(self) -> str:
        return "direct messages" if self.guild_id is None else f"server {self.guild_id}"


def _decode_part(encoded: str) -> str:
    raw = re.sub(
        r"(?:%[0-9A-F]{2})+",
        lambda m: bytes.fromhex(m.group().replace("%", "")).decode("utf-8", "replace"),
        encoded,
    )
    return raw


SCOPE_KINDS = (
    "turns", "turn", "msg", "seq", "terms", "profile", "summary", "postings", "stats",
    "taste", "story",
)  # fmt: skip
OTHER_KINDS = ("lock",)
GUILD_KINDS = (
    "chat_channels", "personas", "modpolicy", "modlog", "inflight", "trivia_board",
)  # fmt: skip
CATALOG_KINDS = ("titles", "meta")
# Per member of a server, kept by the server's moderation (not part of a user's memory).
GUILD_USER_KINDS = ("strikes", "cooldown", "flood", "notified")


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every key name; `prefix` lets tests share a server without collisions."""

    prefix: str = "mb"

    def user_tag(self, user_id: str) -> str:
        return f"{self.prefix}:{{u{encode_part(user_id)}}}"

    def index(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:index"

    def scope_key(self, user_id: str, scope: Scope, kind: str) -> str:
        if kind not in SCOPE_KINDS + OTHER_KINDS:
            raise ValueError(f"unknown key kind {kind!r}")
        return f"{self.user_tag(user_id)}:{scope.name}:{kind}"

    def scope_keys(self, user_id: str, scope: Scope) -> list[str]:
        """The keys of one scope, in the order the Lua scripts expect them."""
        return [self.scope_key(user_id, scope, kind) for kind in SCOPE_KINDS]

    def guild_tag(self, guild_id: str) -> str:
        return f"{self.prefix}:{{g{encode_part(guild_id)}}}"

    def guild_key(self, guild_id: str, kind: str) -> str:
        if kind not in GUILD_KINDS:
            raise ValueError(f"unknown key kind {kind!r}")
        return f"{self.guild_tag(guild_id)}:{kind}"

    def guild_user_key(self, guild_id: str, kind: str, user_id: str) -> str:
        """A server's record about one member; shares the server's hash tag so that
        one script can update it with the server's keys."""
        if kind not in GUILD_USER_KINDS:
            raise ValueError(f"unknown key kind {kind!r}")
        return f"{self.guild_tag(guild_id)}:{kind}:{encode_part(user_id)}"

    def trivia_key(self, guild_id: str, question_id: str) -> str:
        """One trivia question of a server (with `:answered` beside it)."""
        return f"{self.guild_tag(guild_id)}:trivia:{encode_part(question_id)}"

    def member_inflight_key(self, user_id: str) -> str:
        """A member's replies generating now, across processes (leases)."""
        return f"{self.user_tag(user_id)}:inflight"

    def remote_slots_key(self) -> str:
        """Requests at the model server now, from every process (leases)."""
        return f"{self.prefix}:{{deploy}}:remote"

    def identify_key(self, bucket: int) -> str:
        """One identify bucket's turn (Discord: one identify a bucket every 5 s)."""
        return f"{self.prefix}:{{deploy}}:identify:{bucket}"

    def catalog_key(self, kind: str) -> str:
        """The shared media catalog (one per deployment, not per user or server)."""
        if kind not in CATALOG_KINDS:
            raise ValueError(f"unknown key kind {kind!r}")
        return f"{self.prefix}:{{catalog}}:{kind}"

    def scope_of(self, user_id: str, key: str) -> Scope | None:
        """The scope a key of this user belongs to, or None for user-level keys."""
        head = self.user_tag(user_id) + ":"
        if not key.startswith(head):
            return None
        rest = key[len(head) :]
        name, _, kind = rest.rpartition(":")
        if kind not in SCOPE_KINDS or not name:
            return None
        return Scope.from_name(name)
