"""The catalog: importing the default file and others (malformed rows skipped and
counted, re-import idempotent), typo-tolerant search and filters, storage in Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.media.catalog import Catalog, concept_of, genre_concept, genre_words
from bot.media.library import CatalogFileError, Library, parse_file, parse_mapping
from bot.settings import DEFAULT_TITLES
from memory.connection import RedisClient
from memory.keys import Keys
from tests.conftest import REDIS_CLUSTER

pytestmark = REDIS_CLUSTER

DATA = Path(__file__).parent / "data" / "catalogs"
ROOT = Path(__file__).resolve().parents[1]


def test_default_catalog_imports_whole(catalog: Catalog) -> None:
    titles, report = parse_file(DEFAULT_TITLES)
    assert report.loaded == 8807 and report.skipped == 0
    assert report.columns["genres"] == "listed_in" and report.columns["year"] == "release_year"
    dark = catalog.exact("Dark")[0]
    assert dark.type == "TV Show" and dark.year is not None
    assert "Crime TV Shows" in dark.genres and "Louis Hofmann" in dark.cast
    # The three rows with a duration in the rating column are mended, not lost.
    moved = [t for t in titles if t.duration.endswith("min") and not t.rating]
    assert {t.duration for t in moved} >= {"74 min", "84 min", "66 min"}


def test_csv_with_other_columns_and_bad_rows() -> None:
    titles, report = parse_file(
        DATA / "games.csv", parse_mapping(["type=Platform Kind", "directors=Developer"])
    )
    names = sorted(t.title for t in titles)
    assert names == ["Celeste", "Disco Elysium", "Hollow Knight", "Outer Wilds"]
    assert report.skipped == 3
    assert report.reasons == {"no title": 1, "bad year": 1, "duplicate": 1}
    knight = next(t for t in titles if t.title == "Hollow Knight")
    assert knight.genres == ("Metroidvania", "Action") and knight.directors == ("Team Cherry",)
    assert knight.popularity == 120000 and knight.type == "Game" and knight.year == 2017
    assert "3 rows skipped" in report.describe()


def test_json_catalog_with_nested_people_and_junk() -> None:
    titles, report = parse_file(DATA / "books.json", parse_mapping(["directors=authors"]))
    by_name = {t.title: t for t in titles}
    assert set(by_name) == {"Piranesi", "The Left Hand of Darkness", "Dune"}
    assert by_name["The Left Hand of Darkness"].directors == ("Ursula K. Le Guin",)
    assert by_name["The Left Hand of Darkness"].year == 1969
    assert report.reasons == {"malformed": 1, "no title": 1}


@pytest.mark.parametrize(
    ("content", "mapping", "message"),
    [
        (b"", [], "empty"),
        (b"\x00\x01\xff\xfe garbage", [], "no rows"),
        (b"colour,size\nred,3\n", [], "no title column"),
        (b"Name,Year\nA,2000\n", ["title=Missing"], "no column 'Missing'"),
    ],
)
def test_unreadable_files_say_why(
    tmp_path: Path, content: bytes, mapping: list[str], message: str
) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(content)
    with pytest.raises(CatalogFileError, match=message):
        parse_file(path, parse_mapping(mapping))


def test_a_bad_mapping_is_refused() -> None:
    with pytest.raises(CatalogFileError, match="unknown field"):
        parse_mapping(["colour=Name"])
    with pytest.raises(CatalogFileError, match="FIELD=COLUMN"):
        parse_mapping(["title"])


@pytest.mark.parametrize(
    ("typed", "found"),
    [
        ("stranger thngs", "Stranger Things"),
        ("the irishmen", "The Irishman"),
        ("breaking bad", "Breaking Bad"),
        ("NARCOS mexico", "Narcos: Mexico"),
        ("charite at war", "Charité at War"),
        ("pele", "Pelé"),
        ("the wichter", "The Witcher"),
    ],
)
def test_typo_tolerant_title_search(catalog: Catalog, typed: str, found: str) -> None:
    best = catalog.best(typed)
    assert best is not None and best.title == found


def test_nonsense_finds_nothing(catalog: Catalog) -> None:
    assert catalog.find("zzqxv wobble frump") == []
    assert catalog.find("   ") == []


def test_search_filters(catalog: Catalog) -> None:
    horror = catalog.search(genre="scary", kind="Movie", year_from=1980, year_to=1989, limit=50)
    assert horror and all(
        "horror" in t.concepts and t.type == "Movie" and 1980 <= (t.year or 0) <= 1989
        for t in horror
    )
    scorsese = catalog.search(person="martin scorsese", limit=50)
    assert "The Irishman" in {t.title for t in scorsese}
    assert all("Martin Scorsese" in t.people for t in scorsese)
    assert catalog.search(person="Nobody Atall Really", limit=5) == []


def test_genre_concepts() -> None:
    assert genre_concept("Horror Movies") == genre_concept("TV Horror") == "horror"
    assert genre_concept("Crime TV Shows") == "crime"
    assert genre_concept("Metroidvania") == "metroidvania"  # other catalogs' own labels
    assert genre_concept("Movies") == ""
    assert concept_of("comedies") == "comedy" and concept_of("sci-fi") == "sci-fi & fantasy"
    assert genre_words("a scary stand-up comedy") == ["stand-up", "horror"]


def test_titles_spotted_in_text(catalog: Catalog) -> None:
    found = {t.title for t in catalog.mentioned("Did you see Stranger Things or The Irishman?")}
    assert found == {"Stranger Things", "The Irishman"}


async def test_library_stores_once_and_reimport_is_idempotent(
    redis_client: RedisClient, keys: Keys
) -> None:
    library = Library(redis_client, keys)
    titles, _ = parse_file(DATA / "games.csv", parse_mapping(["type=Platform Kind"]))
    assert await library.store(titles, source="games.csv") == 4
    first = await library.load()
    assert await library.store(titles, source="games.csv") == 0
    assert await library.count() == 4
    again = await library.load()
    assert {t.id: t for t in first.titles.values()} == {t.id: t for t in again.titles.values()}
    books, _ = parse_file(DATA / "books.json")
    await library.store(books, source="books.json")
    assert await library.count() == 7
    await library.store(books, source="books.json", replace=True)
    assert await library.count() == 3


async def test_library_seeds_the_default_once_and_reloads_on_import(
    redis_client: RedisClient, keys: Keys
) -> None:
    library = Library(redis_client, keys)
    catalog = await library.ensure(DATA / "games.csv")
    assert len(catalog) == 4
    other = Library(redis_client, keys)  # a second bot process
    assert len(await other.ensure(DATA / "books.json")) == 4  # not seeded twice
    books, _ = parse_file(DATA / "books.json")
    await other.store(books, source="books.json")
    reloaded = await library.current(every=0)
    assert reloaded is not catalog and len(reloaded) == 7
    # An unreadable entry is skipped, not fatal.
    await redis_client.hset(library.titles_key, "junk", "{not json")  # type: ignore[misc]
    assert len(await library.load()) == 7


def test_import_command(tmp_path: Path, redis_url: str, keys: Keys) -> None:
    # The `keys` fixture deletes what the command wrote under this prefix.
    env = {**os.environ, "REDIS_URL": redis_url, "MEMORY_KEY_PREFIX": keys.prefix}
    cmd = [sys.executable, "-m", "bot", "import-catalog", str(DATA / "books.json"),
           "--map", "directors=authors", "--type", "Book"]  # fmt: skip
    first = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=120, check=False)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "3 titles read, 2 rows skipped (1 malformed, 1 no title)" in first.stderr
    assert "3 new" in first.stderr
    second = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert "0 new, 3 already there" in second.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "bot", "import-catalog", str(tmp_path / "none.csv")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "Could not read" in bad.stderr
