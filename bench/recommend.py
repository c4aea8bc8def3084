"""`python -m bench recommend` (`mediabot bench-recommend`): precision@5 of
recommendations for synthetic users with planted tastes, against the popularity
baseline, in the same run.

Each user is planted two liked genres and one disliked genre. Their profile holds only
titles: four liked titles of the planted genres, one disliked title of the disliked
genre, and two seen titles; the genres themselves are held out. Each asks a request
that names no genre ("what should I watch tonight?"). A pick counts as a hit when it
has a planted liked genre; precision@5 is the share of hits among the five picks.
"""

from __future__ import annotations

import random
import time
from typing import Any

from bot.media.catalog import Catalog
from bot.media.recommend import PICKS, Mood, Recommender, Taste
from bot.media.taste import item

REQUESTS = (
    "what should I watch tonight?",
    "recommend me something",
    "anything good to watch?",
    "I need something for the weekend",
)
MIN_TITLES = 60  # a genre needs this many titles to be planted


def synthetic_users(catalog: Catalog, count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    concepts = [c for c in catalog.concepts if len(catalog.by_concept(c)) >= MIN_TITLES]
    users = []
    for n in range(count):
        liked = rng.sample(concepts, 2)
        disliked = rng.choice([c for c in concepts if c not in liked])
        pool = [t for c in liked for t in catalog.by_concept(c) if disliked not in t.concepts]
        liked_titles = rng.sample(pool, 4)
        bad = rng.choice(catalog.by_concept(disliked))
        seen = rng.sample(list(catalog.titles.values()), 2)
        items = [item("like", "title", t.id, t.title) for t in liked_titles]
        items.append(item("dislike", "title", bad.id, bad.title))
        items += [item("seen", "title", t.id, t.title) for t in seen]
        users.append(
            {"user": f"u{n}", "liked": liked, "disliked": disliked, "items": items,
             "request": REQUESTS[n % len(REQUESTS)]}
        )  # fmt: skip
    return users


def run(catalog: Catalog, users: int = 50, seed: int = 7) -> dict[str, Any]:
    recommender = Recommender(catalog)
    hits = base_hits = disliked_shown = 0
    started = time.perf_counter()
    for user in synthetic_users(catalog, users, seed):
        taste = Taste.of(catalog, user["items"])
        picks = recommender.pick(
            Mood.read(catalog, user["request"]), taste, k=PICKS, salt=user["user"]
        )
        planted = set(user["liked"])
        hits += sum(1 for p in picks if p.title.concepts & planted)
        disliked_shown += sum(1 for p in picks if user["disliked"] in p.title.concepts)
        baseline = recommender.popular(PICKS, exclude=taste.excluded)
        base_hits += sum(1 for t in baseline if t.concepts & planted)
    elapsed = time.perf_counter() - started
    total = users * PICKS
    return {
        "users": users,
        "k": PICKS,
        "precision_at_5": round(hits / total, 3),
        "popularity_precision_at_5": round(base_hits / total, 3),
        "disliked_genre_shown": disliked_shown,
        "ms_per_request": round(elapsed / users * 1000, 1),
    }


def report(result: dict[str, Any]) -> str:
    return (
        f"precision@5 over {result['users']} synthetic users: {result['precision_at_5']:.2f} "
        f"(popularity baseline {result['popularity_precision_at_5']:.2f}); picks with a "
        f"disliked genre: {result['disliked_genre_shown']}; "
        f"{result['ms_per_request']} ms per request."
    )
