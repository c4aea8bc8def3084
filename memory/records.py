"""The records memory keeps, validated with pydantic whenever they are read back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["user", "assistant"]


class Turn(BaseModel):
    """One message of a conversation, as stored. `tokens` is counted once, at write."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Role
    text: str
    time: float = Field(ge=0)
    message_id: str | None = None
    tokens: int = Field(ge=0)
    edited: bool = False


class StoredTurn(Turn):
    """A turn read back from Redis, with the id memory gave it (its order in the scope)."""

    id: int = Field(ge=1)


class Fact(BaseModel):
    """One profile fact: a value the user stated, and where they stated it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    label: str = Field(min_length=1, max_length=80)
    value: str = Field(min_length=1, max_length=200)
    message_id: str | None = None
    turn_id: int = Field(ge=0)
    time: float = Field(ge=0)


class Summary(BaseModel):
    """The rolling summary of turns that left the window."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    text: str = ""
    covers: list[int] = Field(default_factory=list)  # the turn ids folded in
    upto: int = Field(default=0, ge=0)  # every turn up to this id is folded in
    stale: bool = False  # a covered turn was edited or deleted: rebuild it
    version: int = Field(default=0, ge=0)
    time: float = Field(default=0.0, ge=0)

    @field_validator("covers", mode="before")
    @classmethod
    def _lua_empty_array(cls, value: object) -> object:
        # Lua's cjson writes an empty array as {}.
        return [] if value == {} else value


Polarity = Literal["like", "dislike", "seen"]
TasteKind = Literal["genre", "title", "person"]


class TasteItem(BaseModel):
    """One entry of a taste profile: the user likes, dislikes or has seen a genre,
    title or person, and where that came from (a chat message, /prefs, a button)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    polarity: Polarity
    kind: TasteKind
    key: str = Field(min_length=1, max_length=120)  # genre concept, title id, person name
    value: str = Field(min_length=1, max_length=300)  # as it is shown
    source: Literal["chat", "prefs", "button"] = "prefs"
    message_id: str | None = None
    time: float = Field(default=0.0, ge=0)

    @property
    def field(self) -> str:
        return f"{self.polarity}:{self.kind}:{self.key}"

    @property
    def opposite(self) -> str | None:
        """Liking something ends disliking it, and the other way round."""
        other = {"like": "dislike", "dislike": "like"}.get(self.polarity)
        return f"{other}:{self.kind}:{self.key}" if other else None
