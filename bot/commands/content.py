"""Content commands: a headline, social post, ad copy or synopsis about a title or a
topic. The subject is screened like a message and the result reviewed like a reply."""

from __future__ import annotations

from bot.commands.base import NO_CATALOG, Caller, Feature, Refused
from bot.media.content import Content, ContentRequest, Kind, Length, Platform, Tone

# What an option left out means, in both front ends.
TONES: dict[Kind, Tone] = {
    "headline": "neutral", "post": "neutral", "adcopy": "excited", "synopsis": "neutral"
}  # fmt: skip
LENGTHS: dict[Kind, Length] = {
    "headline": "medium", "post": "medium", "adcopy": "short", "synopsis": "short"
}  # fmt: skip


def content_request(
    kind: Kind,
    subject: str,
    *,
    tone: Tone | None = None,
    length: Length | None = None,
    platform: Platform | None = None,
) -> ContentRequest:
    """A request with this kind's defaults for the options not given (a post's length
    is its platform's)."""
    return ContentRequest(kind, subject, tone or TONES[kind], length or LENGTHS[kind],
                          platform or "x")  # fmt: skip


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
