"""Media content: headlines, social posts, ad copy and synopses, for a catalog title
(its facts go into the prompt) or a free topic. Templates live in `prompts/tasks/`.

The model writes; code checks, sentence by sentence: a sentence that contradicts the
catalog (a year, a credit, a quoted name; see `bot.media.facts`) is dropped; mentions
and @handles are removed; hashtags are cut to the platform's count; the text is cut to
the platform's length at a sentence or word boundary. When nothing survives, the
answer is built from the catalog facts alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from bot.generation.base import GenerationError, GenerationParams, Generator, Owner
from bot.media.catalog import Catalog, Title, genre_concept
from bot.media.facts import sentences, unsupported
from bot.moderation.rules import Rules
from prompts import load_task

Kind = Literal["headline", "post", "adcopy", "synopsis"]
Platform = Literal["x", "instagram", "tiktok", "threads"]
Tone = Literal["neutral", "excited", "funny", "serious", "dramatic"]
Length = Literal["short", "medium", "long"]

# Characters and hashtags each platform allows in a post (the X figure is its
# 280-character limit; the hashtag counts are what reads well, within each limit).
PLATFORMS: dict[str, tuple[int, int]] = {
    "x": (280, 2),
    "instagram": (2200, 10),
    "tiktok": (2200, 5),
    "threads": (500, 1),
}
PLATFORM_NAMES = {"x": "X (Twitter)", "instagram": "Instagram", "tiktok": "TikTok",
                  "threads": "Threads"}  # fmt: skip
LENGTHS: dict[str, dict[str, int]] = {
    "headline": {"short": 70, "medium": 100, "long": 140},
    "adcopy": {"short": 160, "medium": 320, "long": 600},
    "synopsis": {"short": 300, "medium": 600, "long": 1000},
}
LENGTH_WORDS = {"short": "short", "medium": "medium-length", "long": "longer"}
HASHTAG = re.compile(r"(?<![\w#])#(\w{1,60})")
HANDLE = re.compile(r"(?<![\w@])@(\w{1,40})")


@dataclass(frozen=True, slots=True)
class ContentRequest:
    kind: Kind
    subject: str
    tone: Tone = "neutral"
    length: Length = "medium"
    platform: Platform = "x"


@dataclass(frozen=True, slots=True)
class Content:
    text: str
    title: Title | None  # the catalog title it is about, if the subject named one
    limit: int
    dropped: int  # sentences refused by the checks
    from_model: bool


def limit_of(request: ContentRequest) -> tuple[int, int]:
    """(most characters, most hashtags) for this request."""
    if request.kind == "post":
        return PLATFORMS[request.platform]
    return LENGTHS[request.kind][request.length], 0


def facts_line(title: Title | None) -> str:
    if title is None:
        return "none given; name no real titles, people or years"
    return title.facts()


def cut(text: str, limit: int) -> str:
    """At most `limit` characters, ending at a sentence end, else a word, else hard."""
    if len(text) <= limit:
        return text
    room = text[: limit - 1]
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", room)]
    if ends and ends[-1] > limit // 2:
        return room[: ends[-1]].rstrip()
    space = room.rfind(" ")
    return (room[:space] if space > limit // 2 else room).rstrip(" ,;:-") + "…"


def tidy(catalog: Catalog, request: ContentRequest, title: Title | None, raw: str) -> Content:
    """Apply every check to what the model wrote (see the module docstring)."""
    limit, most_tags = limit_of(request)
    text = Rules.clean_output(raw).strip().strip('"“”')
    text = HANDLE.sub(r"\1", text)  # no @handles: nobody is tagged
    text = re.sub(r"^(?:headline|post|caption|ad copy|synopsis)\s*:\s*", "", text, flags=re.I)
    kept, dropped = [], 0
    for sentence in sentences(text):
        # About a catalog title, any name it does not credit is refused (invented cast
        # and awards read as facts); about a free topic, only catalog claims are checked.
        if unsupported(catalog, sentence, title, strict_names=title is not None):
            dropped += 1
            continue
        kept.append(sentence.strip())
    body = " ".join(kept) if request.kind != "post" else "\n".join(kept)
    tags: list[str] = []

    def keep_tag(match: re.Match[str]) -> str:
        tag = match.group(1)
        if len(tags) < most_tags and tag.lower() not in {t.lower() for t in tags}:
            tags.append(tag)
            return match.group(0)
        return tag if match.start() > 0 else ""

    body = HASHTAG.sub(keep_tag, body).strip()
    if request.kind == "headline":
        body = body.split("\n", 1)[0].strip()
    body = re.sub(r"[ \t]{2,}", " ", body)
    from_model = bool(body)
    if not body:
        body = fallback(request, title)
    return Content(cut(body, limit), title, limit, dropped, from_model)


def fallback(request: ContentRequest, title: Title | None) -> str:
    """Content from the catalog facts alone, when none of the model's text survives."""
    if title is None:
        subject = request.subject.strip()
        return {
            "headline": f"{subject[:80]}: what's worth knowing",
            "post": f"Talking about {subject[:200]} today. What do you think?",
            "adcopy": f"{subject[:200]}. Don't miss it.",
            "synopsis": f"{subject[:300]}.",
        }[request.kind]
    what = {"Movie": "film", "TV Show": "series"}.get(title.type, title.type.lower())
    genres = ", ".join(g for g in title.genres[:2] if genre_concept(g)).lower()
    by = f" from {title.directors[0]}" if title.directors else ""
    with_ = f" starring {', '.join(title.cast[:2])}" if title.cast else ""
    year = f"{title.year} " if title.year else ""
    line = f"{title.title}, the {year}{genres + ' ' if genres else ''}{what}{by}{with_}"
    if request.kind == "headline":
        return f"{title.title}: the {year}{what}{by} everyone is talking about"
    if request.kind == "post":
        tag = re.sub(r"\W", "", title.title)[:40]
        most = PLATFORMS[request.platform][1]
        return f"Watching {line}. Who's in?" + (f" #{tag}" if tag and most else "")
    if request.kind == "adcopy":
        return f"{line}. Start watching tonight."
    return f"{line}."


async def write(
    generator: Generator,
    catalog: Catalog,
    request: ContentRequest,
    *,
    params: GenerationParams,
    owner: Owner | None = None,
) -> Content:
    """Write one piece of content; the checks run on whatever the model returns."""
    title = catalog.best(request.subject, cutoff=90.0) if request.subject.strip() else None
    limit, most_tags = limit_of(request)
    task = load_task(request.kind)
    values = {
        "subject": title.label if title else request.subject.strip()[:300],
        "facts": facts_line(title),
        "tone": request.tone,
        "platform": PLATFORM_NAMES[request.platform],
        "limit": str(limit),
        "hashtags": str(most_tags),
        "length": LENGTH_WORDS[request.length],
    }
    prompt = task.render(**{k: values[k] for k in task.fields})
    messages = [{"role": "user", "content": prompt}]
    text = ""
    try:
        async for piece in generator.stream(messages, params, owner=owner):
            text += piece
            if len(text) > limit * 2:
                break
    except GenerationError:
        text = ""
    return tidy(catalog, request, title, text)
