"""Every sentence the commands say, in the terminal and on Discord alike: a front end
adds only its own markup (bold, embeds, indentation) and its own command syntax."""

from __future__ import annotations

from collections.abc import Sequence

from bot.media.catalog import Title
from bot.media.recommend import Pick
from memory.records import Polarity

# --- refusals ------------------------------------------------------------------------

MEMORY_DOWN = "I can't reach my memory right now; please try again in a moment."
NO_CATALOG = "The catalog isn't loaded, so I can't do that right now."
BUSY = "I'm busy with other replies right now: please try again in a moment."

# --- titles and search ---------------------------------------------------------------


def no_match(name: str) -> str:
    return f"Nothing in the catalog matches {name!r}."


def also_close(titles: Sequence[Title]) -> str:
    return "Also close: " + ", ".join(t.label for t in titles)


SEARCH_NOTHING_ASKED = "Give at least one of genre, person, kind or years."
SEARCH_NOTHING_FOUND = "Nothing in the catalog matches all of that."


def unknown_genre(genre: str, known: Sequence[str]) -> str:
    return f"I don't know the genre {genre!r}. Genres: {', '.join(known)}."


def search_listing(titles: Sequence[Title], more: bool) -> str:
    """Found titles, newest first, one line each."""
    lines = [f"- {t.label}, {t.type}" + (f" ({', '.join(t.genres[:2])})" if t.genres else "")
             for t in titles]  # fmt: skip
    note = " (the newest shown; narrow it down for others)" if more else ""
    return f"From the catalog{note}:\n" + "\n".join(lines)


# --- recommendations -----------------------------------------------------------------

ANYTHING_GOOD = "something good"  # the request when no mood is given
NOTHING_FOUND = (
    'I couldn\'t find anything in the catalog for that. Try a genre ("a scary film"), '
    'a title you liked ("something like Dark") or a person.'
)
TITLE_GONE = "That title is no longer in the catalog."


def picks_for(name: str, mood: str) -> str:
    return f"Picks for {name}" + (f": {mood}" if mood else "")


def more_like(title: str) -> str:
    return f"More like {title}:"


def picks_text(picks: Sequence[Pick]) -> str:
    """Picks as a chat message: title and facts from the catalog, then the sentence."""
    lines = ["Here's what I'd pick from the catalog:"]
    for n, p in enumerate(picks, 1):
        t = p.title
        facts = ", ".join(x for x in (str(t.year) if t.year else "", t.type) if x)
        why = f" (Picked because {p.reason}.)" if p.blurb_from_model else ""
        lines.append(f"{n}. **{t.title}** ({facts}): {p.blurb}{why}")
    return "\n".join(lines)


def why(reason: str) -> str:
    return f"Why: {reason}"


# --- taste profiles ------------------------------------------------------------------

_NOTED = {"like": "you like", "dislike": "you don't like", "seen": "you've seen"}
_NOTED_TITLE = {"like": "you like", "dislike": "not for you", "seen": "you've seen it"}
TASTE_FULL = "Your taste profile is full: remove something first."
TASTE_HEADER = "Your taste profile here:"


def noted(polarity: Polarity, shown: str, kind: str) -> str:
    return f"Noted: {_NOTED[polarity]} {shown} ({kind})."


def noted_title(polarity: Polarity, title: str) -> str:
    return f"Noted for {title}: {_NOTED_TITLE[polarity]}."


def not_in_catalog(phrase: str, genres: Sequence[str]) -> str:
    return (f"I couldn't find {phrase[:80]!r} in the catalog as a genre, title or person. "
            f"Genres I know: {', '.join(genres[:30])}.")  # fmt: skip


def not_in_profile(phrase: str) -> str:
    return f"{phrase[:80]!r} is not in your taste profile here."


def removed(count: int, phrase: str) -> str:
    return f"Removed {count} item(s) about {phrase[:80]} from your profile."


def taste_empty(add: str) -> str:
    """`add`: how this front end adds to the profile."""
    return ("Your taste profile here is empty. Tell me what you like in chat "
            f'("I loved Dark") or with {add}.')  # fmt: skip


def taste_help(add: str, remove: str) -> str:
    return f"Change it with {add} and {remove}; /forget deletes it."


# --- content -------------------------------------------------------------------------


def about(label: str) -> str:
    return f"About {label}, from the catalog."


# --- trivia and stories --------------------------------------------------------------

NO_QUESTION = "The catalog has too little in it for trivia."
ANSWERS = {
    "right": "Right! That's {score} point{s} for you here.",
    "wrong": "Not quite: the answer was {answer}.",
    "again": "You already answered this one.",
    "late": "Time's up for this one: the answer was {answer}.",
    "gone": "This question has expired.",
}
NOBODY_SCORED = "Nobody has scored yet: /trivia play starts a round."


def answered(outcome: str, score: int, answer: str) -> str:
    """What an answer earned; `answer` is the right option as the front end shows it."""
    return ANSWERS[outcome].format(score=score, s="" if score == 1 else "s", answer=answer)


def no_answer(answer: str) -> str:
    return f"No answer: it was {answer}."


def trivia_heading(seconds: int) -> str:
    return f"Trivia ({seconds} s, one answer each)"


def times_up(answer: str) -> str:
    return f"Time's up! The answer: {answer}"


STORY_NONE = "You have no story running here. Start one with /story start."
STORY_STALE = "That choice is from an earlier scene of your story."
STORY_NOT_OFFERED = "That choice is not on offer."
STORY_ENDED = "Your story has ended. /story start begins a new one."
STORY_NOT_RUNNING = "You have no story running here."
STORY_NOT_YOURS = "This is someone else's story: start yours with /story start."

# --- memory --------------------------------------------------------------------------

FACTS_HEADER = "What I know about you here:"
MEMORY_HINT = "Use /reset to clear this, /forget to delete everything everywhere."
FORGET_ASK = "This deletes everything I store about you, in every server and in DMs. Sure?"
KEPT = "Kept everything."
EXPORT_INTRO = "Everything I store about you, in every server and in DMs:"


def nothing_remembered(place: str) -> str:
    """`place`: "here", "in this server", "in our DMs"."""
    return f"I don't remember anything of our conversation {place} yet."


def remembered(count: int, shown: int, place: str) -> str:
    """How many messages are kept, introducing the `shown` last of them."""
    if not count:
        return nothing_remembered(place)
    last = f"; the last {shown}:" if shown < count else ":"
    return f"I remember {count} messages of our conversation {place}{last}"


def forgot_here(count: int) -> str:
    return f"Forgot our conversation here ({count} messages)."


def forgot_everything(count: int) -> str:
    return (f"Done: I deleted everything I stored about you ({count} messages, "
            "in every server and in DMs).")  # fmt: skip


def exported_to(target: str) -> str:
    return f"Wrote everything stored about you to {target}."


def export_failed(target: str, why: str) -> str:
    return f"Could not write {target}: {why}."
