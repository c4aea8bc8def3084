"""The records memory keeps, validated with pydantic whenever they are read back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
