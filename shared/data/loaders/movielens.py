"""MovieLens-1M: `movies.dat` (MovieID::Title::Genres) and `ratings.dat` (UserID::MovieID::Rating::Timestamp).

Both are `::`-separated and latin-1 encoded. Genres ("Animation|Children's|Comedy") become the category path
("Animation > Children's > Comedy"). Every rating is an event of type "rating" with value = the rating.
ratings.dat is not in time order within a user, so each user's rows are sorted by timestamp (stable: ties
keep file order) and the report says how many users were reordered. Every movie of movies.dat is in the
catalogue, rated or not. users.dat (demographics) is not read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from shared.data.loaders import load_report as r
from shared.data.loaders.common import (
    CatalogueBuilder,
    Lines,
    LogBuilder,
    parse_float,
    parse_time_s,
    sort_within_users,
)
from shared.data.schema import EVENT_CODE, Catalogue, Dataset
from shared.errors import DataError

MOVIES_FILE: Final = "movies.dat"
RATINGS_FILE: Final = "ratings.dat"
ENCODING: Final = "latin-1"
_RATING: Final = EVENT_CODE["rating"]


def load_movielens(folder: Path, *, skip_bad_rows: bool = False) -> tuple[Dataset, r.LoadReport]:
    """Load MovieLens-1M from `folder`; a bad row raises DataError (file, line) or is skipped and counted."""
    movies = r.FileTally(folder / MOVIES_FILE, skip_bad_rows=skip_bad_rows)
    catalogue = _read_movies(movies)
    movies.require_rows()
    ratings = r.FileTally(folder / RATINGS_FILE, skip_bad_rows=skip_bad_rows)
    builder = _read_ratings(ratings, catalogue)
    ratings.require_rows()
    log, n_moved = sort_within_users(builder.build())
    notes = (f"each user's ratings sorted by timestamp (stable); {n_moved} of {log.n_users} users reordered",)
    report = r.LoadReport("movielens", (movies.report(), ratings.report()), notes)
    dataset = Dataset(folder.resolve().name, catalogue, log)
    r.log_summary(dataset.name, report, n_users=log.n_users, n_items=catalogue.n_items, n_rows=log.n_rows)
    return dataset, report


def _fields(tally: r.FileTally, width: int) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line split on `::` into exactly `width` fields."""
    lines = Lines(tally.path, encoding=ENCODING)
    for text in lines:
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        tally.rows_read += 1
        fields = text.split("::")
        if len(fields) != width:
            tally.bad(
                r.WRONG_FIELD_COUNT, lines.line_no, f"{len(fields)} '::'-separated fields, expected {width}"
            )
            continue
        yield lines.line_no, fields
    if tally.rows_read == 0:
        raise DataError("empty file", path=str(tally.path), line=lines.line_no)


def _read_movies(tally: r.FileTally) -> Catalogue:
    items = CatalogueBuilder()
    for line, (movie_id, title, genres) in _fields(tally, 3):
        movie_id = movie_id.strip()
        category = " > ".join(g for g in genres.strip().split("|") if g and g != "(no genres listed)")
        if not movie_id:
            tally.bad(r.MISSING_FIELD, line, "empty MovieID")
        elif not items.add(movie_id, title=title.strip(), category=category):
            tally.bad(r.DUPLICATE_ITEM, line, f"MovieID {movie_id!r} already appeared")
        else:
            tally.rows_loaded += 1
    return items.build()


def _read_ratings(tally: r.FileTally, catalogue: Catalogue) -> LogBuilder:
    log = LogBuilder()
    for line, (user_id, movie_id, rating, timestamp) in _fields(tally, 4):
        item = catalogue.index_of(movie_id.strip())
        value = parse_float(rating)
        seconds = parse_time_s(timestamp)
        if not user_id.strip():
            tally.bad(r.MISSING_FIELD, line, "empty UserID")
        elif item is None:
            tally.bad(r.MISSING_ITEM, line, f"MovieID {movie_id.strip()!r} is not in {MOVIES_FILE}")
        elif value is None or math.isnan(value):
            tally.bad(r.BAD_VALUE, line, "Rating is not a number")
        elif seconds is None:
            tally.bad(r.BAD_TIMESTAMP, line, "Timestamp is not unix seconds")
        else:
            log.add(user_id.strip(), item, seconds, _RATING, value)
            tally.rows_loaded += 1
    return log
