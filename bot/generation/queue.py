"""The fair queue in front of the model.

At most `slots` requests generate at once (the batch width); the rest wait, at most
`max_waiting` of them. A free slot goes round-robin: to the next server with someone
waiting, and within a server to the next member, so one member sending ten messages
delays others by one of theirs, and one busy server cannot starve another. A member
has at most `per_user` requests waiting or generating. Every waiting request knows
its place and is told when it changes; a request cancelled while it waits (its
message deleted, its time up) leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bot.generation.base import GenerationError, Owner

QUEUE_FULL = "I'm busy with a lot of replies right now: please try again in a moment."


def too_many(limit: int) -> str:
    return (
        f"You already have {limit} {'reply' if limit == 1 else 'replies'} on the way: "
        "wait for one to finish."
    )


class QueueFull(GenerationError):
    """The queue is full, or the member has too many requests in it: said at once."""


@dataclass(eq=False)
class _Waiter:
    owner: Owner
    admitted: asyncio.Future[None]
    position: int = 0


class FairQueue:
    def __init__(self, slots: int, *, max_waiting: int = 64, per_user: int = 2) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.per_user = per_user
        self.running = 0
        self._waiting: dict[str, dict[str, deque[_Waiter]]] = {}  # guild -> user -> line
        self._per_user: dict[tuple[str, str], int] = {}  # waiting or running
        self._per_guild: dict[str, int] = {}
        # When each server and member last got a slot: the next slot goes to the
        # server, then the member, served longest ago (never: first).
        self._clock = 0
        self._served_guild: dict[str, int] = {}
        self._served_user: dict[tuple[str, str], int] = {}
        self.admitted_order: list[Owner] = []  # for tests: who started, in order

    @property
    def waiting(self) -> int:
        return sum(len(line) for users in self._waiting.values() for line in users.values())

    @property
    def busy(self) -> bool:
        return self.running > 0 or self.waiting > 0

    @staticmethod
    def _keys(owner: Owner) -> tuple[str, str]:
        return (owner.guild or "", owner.user)

    @contextlib.asynccontextmanager
    async def turn(self, owner: Owner) -> AsyncIterator[None]:
        """Wait for a slot (raising QueueFull at once when there is no room), hold it
        for the body, give it back after."""
        key = self._keys(owner)
        if self._per_user.get(key, 0) >= self.per_user:
            raise QueueFull(too_many(self.per_user))
        if self.running >= self.slots and self.waiting >= self.max_waiting:
            raise QueueFull(QUEUE_FULL)
        self._per_user[key] = self._per_user.get(key, 0) + 1
        self._per_guild[key[0]] = self._per_guild.get(key[0], 0) + 1
        try:
            await self._admit(owner)
            try:
                yield
            finally:
                self.running -= 1
                self._wake()
        finally:
            self._forget(key)

    def _forget(self, key: tuple[str, str]) -> None:
        guild = key[0]
        self._per_user[key] -= 1
        if not self._per_user[key]:
            del self._per_user[key]
            self._served_user.pop(key, None)
        self._per_guild[guild] -= 1
        if not self._per_guild[guild]:
            del self._per_guild[guild]
            self._served_guild.pop(guild, None)

    async def _admit(self, owner: Owner) -> None:
        if self.running < self.slots and not self.waiting:
            self._start(owner)
            return
        waiter = _Waiter(owner, asyncio.get_running_loop().create_future())
        guild, user = self._keys(owner)
        self._waiting.setdefault(guild, {}).setdefault(user, deque()).append(waiter)
        self._announce()
        try:
            await waiter.admitted
        except BaseException:
            if waiter.admitted.done() and not waiter.admitted.cancelled():
                self.running -= 1  # admitted and cancelled in the same moment
                self._wake()
            else:
                self._remove(waiter)
                self._announce()
            raise

    def _start(self, owner: Owner) -> None:
        self.running += 1
        self._clock += 1
        guild, user = self._keys(owner)
        self._served_guild[guild] = self._clock
        self._served_user[(guild, user)] = self._clock
        self.admitted_order.append(owner)
        if owner.on_position is not None:
            owner.on_position(0)

    @staticmethod
    def _pick(
        lines: dict[str, dict[str, deque[_Waiter]]],
        served_guild: dict[str, int],
        served_user: dict[tuple[str, str], int],
    ) -> tuple[str, str]:
        # min() keeps the first of equals: arrival order breaks ties.
        guild = min(lines, key=lambda g: served_guild.get(g, -1))
        user = min(lines[guild], key=lambda u: served_user.get((guild, u), -1))
        return guild, user

    def _order(self) -> list[_Waiter]:
        """Every waiter in the order slots will go to them."""
        lines = {g: {u: deque(q) for u, q in users.items()} for g, users in self._waiting.items()}
        served_guild = dict(self._served_guild)
        served_user = dict(self._served_user)
        clock = self._clock
        out: list[_Waiter] = []
        while lines:
            guild, user = self._pick(lines, served_guild, served_user)
            out.append(lines[guild][user].popleft())
            clock += 1
            served_guild[guild] = served_user[(guild, user)] = clock
            if not lines[guild][user]:
                del lines[guild][user]
                if not lines[guild]:
                    del lines[guild]
        return out

    def _pop_next(self) -> _Waiter | None:
        if not self._waiting:
            return None
        guild, user = self._pick(self._waiting, self._served_guild, self._served_user)
        waiter = self._waiting[guild][user].popleft()
        self._drop_empty(guild, user)
        return waiter

    def _drop_empty(self, guild: str, user: str) -> None:
        if not self._waiting[guild][user]:
            del self._waiting[guild][user]
            if not self._waiting[guild]:
                del self._waiting[guild]

    def _remove(self, waiter: _Waiter) -> None:
        guild, user = self._keys(waiter.owner)
        line = self._waiting.get(guild, {}).get(user)
        if line is None or waiter not in line:
            return
        line.remove(waiter)
        self._drop_empty(guild, user)

    def _wake(self) -> None:
        while self.running < self.slots:
            waiter = self._pop_next()
            if waiter is None:
                break
            if waiter.admitted.done():  # cancelled while queued
                continue
            self._start(waiter.owner)
            waiter.admitted.set_result(None)
        self._announce()

    def _announce(self) -> None:
        for place, waiter in enumerate(self._order(), start=1):
            if waiter.position != place:
                waiter.position = place
                if waiter.owner.on_position is not None:
                    waiter.owner.on_position(place)

    def position(self, owner: Owner) -> int:
        """The place in line of the owner's first waiting request (0: not waiting)."""
        for place, waiter in enumerate(self._order(), start=1):
            if waiter.owner == owner:
                return place
        return 0
