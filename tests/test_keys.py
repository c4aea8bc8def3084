"""The key schema: one hash tag per user, escaped ids, scopes that round-trip."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memory.keys import Keys, Scope, encode_part

ids = st.text(min_size=1, max_size=40)


@given(a=ids, b=ids)
def test_encoding_is_one_to_one_and_well_formed(a: str, b: str) -> None:
    ea, eb = encode_part(a), encode_part(b)
    assert (ea == eb) == (a == b)
    assert all(c.isascii() and c not in "{}: *?[]\\" for c in ea)


@given(user=ids, guild=st.one_of(st.none(), ids))
def test_every_key_of_a_user_shares_one_hash_tag(user: str, guild: str | None) -> None:
    keys = Keys("mb")
    scope = Scope(guild)
    tag = keys.user_tag(user)
    for key in [keys.index(user), *keys.scope_keys(user, scope)]:
        assert key.startswith(tag + ":")
        assert key.count("{") == 1 and key.count("}") == 1
    assert keys.scope_of(user, keys.scope_key(user, scope, "turns")) == scope
    assert keys.scope_of(user, keys.index(user)) is None
    assert Scope.from_name(scope.name) == scope


def test_guild_and_dm_scopes_never_share_keys() -> None:
    keys = Keys("mb")
    dm = set(keys.scope_keys("42", Scope(None)))
    guild = set(keys.scope_keys("42", Scope("dm")))  # a guild id that spells "dm"
    assert not dm & guild
    assert keys.scope_key("42", Scope("7"), "turns") == "mb:{u42}:g7:turns"
    assert keys.scope_key("42", Scope(None), "turns") == "mb:{u42}:dm:turns"
