"""Content commands: a headline, social post, ad copy or synopsis about a title or a
topic. The subject is screened like a message and the result reviewed like a reply."""

from __future__ import annotations

from bot.commands.base import NO_CATALOG, Caller, Feature, Refused
from bot.media.content import Content, ContentRequest


class ContentCommands(Feature):
    async def write(self, caller: Caller, request: ContentRequest) -> Content | Refused:
        """The checked text (see `bot.media.content`). A failed generation needs no
        branch here: the media layer falls back to text built from the catalog."""
        if self.media is None:
            return NO_CATALOG
        policy = await self.policy(caller)
        refused = await self.screen(caller, request.subject, policy)
        if refused is not None:
            return refused
        content = await self.media.content(request, owner=caller.owner())
        return await self.review(policy, content.text) or content
