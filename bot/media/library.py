"""Importing a catalog file, and keeping the catalog in Redis.

`parse_file` reads CSV or JSON with a column mapping (common column names are found
by themselves: a Plex or Jellyfin export, a game or book list); malformed rows are
skipped and counted, never a crash. `Library` stores titles in one Redis hash, so every
bot process serves the same catalog, and a re-import of the same file changes nothing
(ids are the file's own, or derived from type, title and year). The bot builds its
in-process `Catalog` from the hash at start, seeding it from the default file when
empty, and reloads it when an import bumps the version.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bot.media.catalog import Catalog, Title, fold
from memory.connection import RedisClient
from memory.errors import MemoryUnavailable, redis_errors
from memory.keys import Keys
from memory.scripts import load_script

log = logging.getLogger(__name__)

FIELDS = (
    "id", "title", "type", "year", "genres", "directors", "cast", "country", "rating",
    "duration", "popularity",
)  # fmt: skip
# Column names tried, in order, when no mapping names the column.
COLUMN_GUESSES: dict[str, tuple[str, ...]] = {
    "id": ("id", "show_id", "guid", "ratingkey", "rating_key", "item_id", "isbn", "appid"),
    "title": ("title", "name", "primary_title", "originaltitle", "original_title"),
    "type": ("type", "kind", "media_type", "mediatype", "category"),
    "year": ("year", "release_year", "productionyear", "production_year", "released",
             "release_date", "originallyavailableat", "premiere_date", "published"),
    "genres": ("genres", "genre", "listed_in", "tags", "categories"),
    "directors": ("directors", "director", "creator", "creators", "author", "authors",
                  "developer", "developers", "artist"),
    "cast": ("cast", "actors", "people", "stars", "starring", "performers"),
    "country": ("country", "countries", "productionlocations", "origin"),
    "rating": ("rating", "content_rating", "contentrating", "officialrating", "age_rating"),
    "duration": ("duration", "runtime", "length", "seasons", "pages"),
    "popularity": ("popularity", "votes", "num_votes", "play_count", "playcount",
                   "communityrating", "score"),
}  # fmt: skip
LIST_FIELDS = {"genres", "directors", "cast"}
MAX_ROWS = 500_000
_YEAR = re.compile(r"\b(1[89]\d\d|20\d\d|2100)\b")
_DURATION = re.compile(r"^\d+\s*(?:min|mins|minutes|h|hours|seasons?|pages?)$", re.I)


class CatalogFileError(ValueError):
    """The file cannot be read as a catalog at all (not a single row can be)."""


@dataclass
class ImportReport:
    loaded: int = 0
    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    columns: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.reasons[reason] += 1

    def describe(self) -> str:
        text = f"{self.loaded:,} titles read, {self.skipped:,} rows skipped"
        if self.reasons:
            text += " (" + ", ".join(f"{n} {why}" for why, n in self.reasons.most_common()) + ")"
        return text + "."


def parse_mapping(pairs: Iterable[str]) -> dict[str, str]:
    """`["title=Name", "year=Year"]` -> {"title": "Name", "year": "Year"}."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        ours = ours.strip().lower()
        if not sep or not theirs.strip():
            raise CatalogFileError(f"a mapping is FIELD=COLUMN, not {pair!r}")
        if ours not in FIELDS:
            raise CatalogFileError(f"unknown field {ours!r}: the fields are {', '.join(FIELDS)}")
        mapping[ours] = theirs.strip()
    return mapping


def _rows(path: Path) -> Iterator[Mapping[str, Any]]:
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig", errors="replace")
    if not text.strip():
        raise CatalogFileError("the file is empty")
    if path.suffix.lower() in (".json", ".jsonl", ".ndjson") or text.lstrip()[:1] in ("[", "{"):
        yield from _json_rows(text)
        return
    # Only the delimiter is sniffed: the sniffer's guesses about quoting are unreliable.
    header = text.split("\n", 1)[0]
    delimiter = max(",;\t|", key=header.count)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise CatalogFileError("the file has no header row")
    yield from reader


def _json_rows(text: str) -> Iterator[Mapping[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        lines = [line for line in text.splitlines() if line.strip()]
        data = []
        for line in lines:
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError:
                data.append(None)  # counted as a malformed row
        if not any(isinstance(d, dict) for d in data):
            raise CatalogFileError("the file is neither JSON nor CSV") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if not lists:
            raise CatalogFileError("the JSON holds no list of titles")
        data = max(lists, key=len)  # {"titles": [...]}, {"MediaContainer": ...}-like
    if not isinstance(data, list):
        raise CatalogFileError("the JSON holds no list of titles")
    for item in data:
        yield item if isinstance(item, dict) else {"__malformed__": True}


def _resolve(columns: Iterable[str], mapping: Mapping[str, str]) -> dict[str, str]:
    present = {c.strip().lower(): c for c in columns if c}
    resolved: dict[str, str] = {}
    for name in FIELDS:
        if name in mapping:
            column = present.get(mapping[name].lower())
            if column is None:
                raise CatalogFileError(f"the file has no column {mapping[name]!r} (for {name})")
            resolved[name] = column
            continue
        for guess in COLUMN_GUESSES[name]:
            if guess in present:
                resolved[name] = present[guess]
                break
    if "title" not in resolved:
        raise CatalogFileError(
            "no title column: name it with --map title=COLUMN "
            f"(columns found: {', '.join(sorted(present.values())[:20])})"
        )
    return resolved


def _names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        items: list[str] = []
        for v in value:
            if isinstance(v, dict):  # Jellyfin-style {"Name": ..., "Type": ...}
                items.append(str(v.get("name") or v.get("Name") or v.get("tag") or ""))
            else:
                items.append(str(v))
    else:
        items = re.split(r"\s*[,;|]\s*", str(value))
    out = []
    for item in items:
        clean = " ".join(item.split())[:120]
        if clean and clean not in out:
            out.append(clean)
    return tuple(out[:40])


def _text(value: Any, limit: int) -> str:
    if value is None or isinstance(value, dict | list):
        return ""
    return " ".join(str(value).split())[:limit]


def title_id(kind: str, name: str, year: int | None) -> str:
    digest = hashlib.sha1(f"{kind.lower()}|{fold(name)}|{year or ''}".encode()).hexdigest()
    return "t" + digest[:12]


def parse_file(
    path: Path, mapping: Mapping[str, str] | None = None, *, default_type: str = "Title"
) -> tuple[list[Title], ImportReport]:
    """Every well-formed title of a CSV or JSON file, and what was skipped and why."""
    report = ImportReport()
    titles: dict[str, Title] = {}
    rows = _rows(path)
    resolved: dict[str, str] | None = None
    for n, row in enumerate(rows):
        if n >= MAX_ROWS:
            report.skip("beyond the row limit")
            continue
        if resolved is None:
            resolved = _resolve(row.keys(), mapping or {})
            report.columns = resolved
        if row.get("__malformed__") or None in row or not isinstance(row, Mapping):
            report.skip("malformed")
            continue
        title = _title(row, resolved, default_type, report)
        if title is None:
            continue
        if title.id in titles:
            report.skip("duplicate")
            continue
        titles[title.id] = title
    if resolved is None:
        raise CatalogFileError("the file holds no rows")
    report.loaded = len(titles)
    return list(titles.values()), report


def _title(
    row: Mapping[str, Any], columns: Mapping[str, str], default_type: str, report: ImportReport
) -> Title | None:
    get = {name: row.get(column) for name, column in columns.items()}
    name = _text(get.get("title"), 300)
    if not name or not fold(name):
        report.skip("no title")
        return None
    year: int | None = None
    raw_year = get.get("year")
    if raw_year not in (None, ""):
        found = _YEAR.search(str(raw_year))
        if not found:
            report.skip("bad year")
            return None
        year = int(found.group())
    rating = _text(get.get("rating"), 40)
    duration = _text(get.get("duration"), 40)
    if _DURATION.match(rating) and not duration:  # a duration in the rating column
        rating, duration = "", rating
    popularity: float | None = None
    raw_pop = get.get("popularity")
    if raw_pop not in (None, ""):
        try:
            popularity = float(str(raw_pop).replace(",", ""))
        except ValueError:
            popularity = None
    kind = _text(get.get("type"), 40) or default_type
    given_id = _text(get.get("id"), 80)
    try:
        return Title(
            id=given_id or title_id(kind, name, year),
            title=name,
            type=kind,
            year=year,
            genres=_names(get.get("genres")),
            directors=_names(get.get("directors")),
            cast=_names(get.get("cast")),
            country=_text(get.get("country"), 200),
            rating=rating,
            duration=duration,
            popularity=popularity,
        )
    except ValidationError:
        report.skip("invalid field")
        return None


class Library:
    """The catalog in Redis: `mb:{catalog}:titles` (id -> title JSON) and
    `mb:{catalog}:meta` (version, source, count, imported_at)."""

    def __init__(
        self, client: RedisClient, keys: Keys | None = None, *, fixed: Catalog | None = None
    ) -> None:
        """`fixed` serves one catalog as it is, never reloaded (tests, benchmarks)."""
        self._redis = client
        self.keys = keys or Keys()
        self._loaded_version: int | None = None
        self._catalog: Catalog | None = fixed
        self._fixed = fixed is not None
        self._checked = 0.0
        self._store = client.register_script(load_script("bot.media", "catalog_store"))
        self._load = client.register_script(load_script("bot.media", "catalog_load"))

    @property
    def titles_key(self) -> str:
        return self.keys.catalog_key("titles")

    @property
    def meta_key(self) -> str:
        return self.keys.catalog_key("meta")

    async def store(self, titles: list[Title], *, source: str, replace: bool = False) -> int:
        """Write titles in one atomic script call; returns how many were new. With
        `replace`, titles not in this import go."""
        with redis_errors():
            existing = {x.decode() if isinstance(x, bytes) else x
                        for x in await self._redis.hkeys(self.titles_key)}  # type: ignore[misc]  # fmt: skip
            args = ["1" if replace else "0", source[:300], str(time.time())]
            for t in titles:
                args += [t.id, t.model_dump_json(exclude_defaults=True)]
            await self._store(keys=[self.titles_key, self.meta_key], args=args)
        return len({t.id for t in titles} - existing)

    async def count(self) -> int:
        with redis_errors():
            return int(await self._redis.hlen(self.titles_key))  # type: ignore[misc]

    async def version(self) -> int:
        with redis_errors():
            raw = await self._redis.hget(self.meta_key, "version")  # type: ignore[misc]
        return int(raw or 0)

    async def load(self) -> Catalog:
        """Every stored title as an index; unreadable entries are skipped and logged."""
        with redis_errors():
            version, *raw = await self._load(keys=[self.meta_key, self.titles_key], args=[])
        titles = []
        bad = 0
        for value in raw[1::2]:
            try:
                titles.append(Title.model_validate_json(value))
            except ValidationError:
                bad += 1
        if bad:
            log.warning("skipped %d unreadable catalog entries", bad)
        self._catalog = Catalog(titles)
        self._loaded_version = int(version or 0)
        self._checked = time.monotonic()
        return self._catalog

    async def ensure(self, default: Path | None) -> Catalog:
        """The stored catalog, seeded from `default` when Redis holds none."""
        if self._fixed and self._catalog is not None:
            return self._catalog
        if await self.count() == 0 and default is not None:
            titles, report = parse_file(default, default_type="Title")
            await self.store(titles, source=default.name)
            log.info("catalog seeded from %s: %s", default.name, report.describe())
        return await self.load()

    async def current(self, *, every: float = 30.0) -> Catalog:
        """The index, reloaded when another process imported a catalog since (checked
        at most every `every` seconds; without Redis the last index serves)."""
        if self._catalog is None:
            return await self.load()
        if self._fixed:
            return self._catalog
        if time.monotonic() - self._checked >= every:
            self._checked = time.monotonic()
            try:
                if await self.version() != self._loaded_version:
                    return await self.load()
            except MemoryUnavailable:
                log.warning("catalog version check failed; serving the loaded catalog")
        return self._catalog

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            raise RuntimeError("the catalog is not loaded yet")
        return self._catalog
