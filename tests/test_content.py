"""Content generation: what code enforces on the model's text (platform length limits,
hashtag counts, no mentions, nothing that contradicts the catalog), with scripted
text for each rule and the real model for every kind and platform."""

from __future__ import annotations

import re

import pytest

from bot.generation.base import GenerationParams
from bot.generation.local import LocalGenerator
from bot.media.catalog import Catalog
from bot.media.content import HASHTAG, PLATFORMS, ContentRequest, cut, limit_of, tidy, write
from bot.media.facts import YEAR
from tests.conftest import ScriptedGenerator


def test_x_posts_fit_280_and_keep_two_hashtags(catalog: Catalog) -> None:
    raw = ("The Irishman is a sprawling crime saga. " * 12
           + "#crime #scorsese #netflix #film #mustwatch")  # fmt: skip
    title = catalog.exact("The Irishman")[0]
    out = tidy(catalog, ContentRequest("post", "The Irishman", platform="x"), title, raw)
    assert len(out.text) <= 280 and out.limit == 280
    assert len(HASHTAG.findall(out.text)) <= 2
    threads = tidy(catalog, ContentRequest("post", "x", platform="threads"), None,
                   "Movie night! #one #two #three")  # fmt: skip
    assert HASHTAG.findall(threads.text) == ["one"] and "two" in threads.text


def test_no_mentions_survive(catalog: Catalog) -> None:
    raw = "Hey @everyone and @here, ask @netflix and <@123456789012345678> to watch Dark!"
    out = tidy(catalog, ContentRequest("post", "Dark", platform="instagram"), None, raw)
    assert "@" not in out.text.replace("@\u200b", "")
    assert re.search(r"<@!?\d+>", out.text) is None


def test_claims_that_contradict_the_catalog_are_dropped(catalog: Catalog) -> None:
    dark = catalog.exact("Dark")[0]
    raw = (f"Dark is a gripping time-travel series. It came out in {dark.year - 7}. "
           "It was directed by Steven Spielberg. Starring Louis Hofmann, it never lets go. "
           "Fans of \"Moon Harbor\" will love it.")  # fmt: skip
    out = tidy(catalog, ContentRequest("synopsis", "Dark", length="long"), dark, raw)
    assert out.dropped == 3
    assert (
        out.text
        == "Dark is a gripping time-travel series. Starring Louis Hofmann, it never lets go."
    )
    # About a free topic, a catalog title named with a wrong year is dropped too.
    irishman = catalog.exact("The Irishman")[0]
    topic = tidy(catalog, ContentRequest("headline", "gangster films"), None,
                 f"The Irishman ({irishman.year + 3}) tops gangster lists")  # fmt: skip
    assert str(irishman.year + 3) not in topic.text and not topic.from_model


def test_nothing_left_falls_back_to_the_facts(catalog: Catalog) -> None:
    dark = catalog.exact("Dark")[0]
    for kind in ("headline", "post", "adcopy", "synopsis"):
        out = tidy(catalog, ContentRequest(kind, "Dark"), dark, "")  # type: ignore[arg-type]
        assert not out.from_model and "Dark" in out.text and len(out.text) <= out.limit
        assert all(int(y) == dark.year for y in YEAR.findall(out.text))


def test_headlines_are_one_line_and_cut_cleanly(catalog: Catalog) -> None:
    out = tidy(catalog, ContentRequest("headline", "space", length="short"), None,
               "Headline: Space is big and getting bigger every single day for everyone\n"
               "Second line")  # fmt: skip
    assert "\n" not in out.text and len(out.text) <= 70 and not out.text.startswith("Headline")
    assert cut("One. Two three four five six.", 12) == "One. Two…"
    assert cut("A long first sentence here. Then more.", 34) == "A long first sentence here."
    assert len(cut("word " * 100, 50)) <= 50


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
async def test_scripted_flood_of_tags_and_text_per_platform(
    catalog: Catalog, generator: LocalGenerator, platform: str
) -> None:
    flood = ScriptedGenerator(
        generator, ["Watch it now! " * 300, " ".join(f"#t{i}" for i in range(40))]
    )
    request = ContentRequest("post", "Stranger Things", platform=platform)  # type: ignore[arg-type]
    out = await write(flood, catalog, request, params=GenerationParams(max_new_tokens=8))
    most_chars, most_tags = limit_of(request)
    assert len(out.text) <= most_chars and len(HASHTAG.findall(out.text)) <= most_tags


@pytest.mark.model
@pytest.mark.parametrize(
    "request_",
    [
        ContentRequest("headline", "Stranger Things", "excited"),
        ContentRequest("post", "The Irishman", platform="x"),
        ContentRequest("post", "a horror movie marathon", "funny", platform="threads"),
        ContentRequest("adcopy", "Dark", "dramatic", "short"),
        ContentRequest("synopsis", "Breaking Bad", length="short"),
    ],
    ids=lambda r: f"{r.kind}-{r.platform if r.kind == 'post' else r.length}",
)
async def test_real_model_content_obeys_the_rules(
    catalog: Catalog, generator: LocalGenerator, request_: ContentRequest
) -> None:
    params = GenerationParams(max_new_tokens=96, temperature=0.7, top_p=0.9, seed=2)
    out = await write(generator, catalog, request_, params=params)
    most_chars, most_tags = limit_of(request_)
    assert out.text and len(out.text) <= most_chars
    assert len(HASHTAG.findall(out.text)) <= most_tags
    assert "@" not in out.text.replace("@\u200b", "")
    if out.title is not None:
        assert all(int(y) == out.title.year for y in YEAR.findall(out.text)), out.text
