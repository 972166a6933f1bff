"""The MovieLens-1M loader: `::` fields, latin-1 text, genres as a category path, per-user time order."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.data.loaders import detect_format, load_dataset
from shared.data.loaders import load_report as r
from shared.data.schema import EVENT_CODE
from shared.errors import DataError

MOVIES = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"  # line 1
    "2::Café au lait (1993)::Comedy\n"  # line 2
    "3::Heat (1995)::Action\n"  # line 3
)
# user 7's rows are out of time order, with a tie at 100 (file order must decide it); user 9 is in order.
RATINGS = "7::3::4::300\n7::1::5::100\n9::1::3::50\n7::2::2::100\n9::2::1::60\n"


def write(folder: Path, movies: str = MOVIES, ratings: str = RATINGS) -> Path:
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    (folder / "ratings.dat").write_bytes(ratings.encode("latin-1"))
    return folder


def test_movielens_fields_and_per_user_time_order(tmp_path: Path) -> None:
    write(tmp_path)
    assert detect_format(tmp_path) == "movielens"
    dataset, report = load_dataset(tmp_path)
    cat, log = dataset.catalogue, dataset.log
    assert cat.item_ids == ["1", "2", "3"]
    assert cat.titles[1] == "Café au lait (1993)"  # latin-1 decoded
    assert cat.categories == ["Animation > Children's > Comedy", "Comedy", "Action"]
    assert log.user_ids == ["7", "9"]
    # user 7 keeps the positions 0, 1, 3 but its rows are now in time order, the tie in file order
    columns = zip(log.user, log.item, log.timestamp, log.value, strict=True)
    got = [(log.user_ids[u], cat.item_ids[i], int(t), float(v)) for u, i, t, v in columns]
    assert got == [
        ("7", "1", 100, 5.0),
        ("7", "2", 100, 2.0),
        ("9", "1", 50, 3.0),
        ("7", "3", 300, 4.0),
        ("9", "2", 60, 1.0),
    ]
    assert (log.event == EVENT_CODE["rating"]).all()
    assert any("1 of 2 users reordered" in note for note in report.notes)
    assert report.skipped == {} and report.rows_read == 8


@pytest.mark.parametrize(
    ("name", "content", "line", "reason"),
    [
        ("ratings.dat", RATINGS.replace("9::1::3::50", "9::1::3"), 3, r.WRONG_FIELD_COUNT),
        ("ratings.dat", RATINGS.replace("9::1::3::50", "9::8::3::50"), 3, r.MISSING_ITEM),
        ("ratings.dat", RATINGS.replace("9::1::3::50", "9::1::good::50"), 3, r.BAD_VALUE),
        ("ratings.dat", RATINGS.replace("9::1::3::50", "9::1::3::noon"), 3, r.BAD_TIMESTAMP),
        ("movies.dat", MOVIES.replace("3::Heat", "2::Heat"), 3, r.DUPLICATE_ITEM),
        ("movies.dat", MOVIES.replace("::Comedy\n", "\n"), 2, r.WRONG_FIELD_COUNT),
    ],
)
def test_movielens_bad_rows(tmp_path: Path, name: str, content: str, line: int, reason: str) -> None:
    write(tmp_path, **{name.removesuffix(".dat"): content})
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path, format="movielens")
    assert (err.value.path, err.value.line) == (str(tmp_path / name), line)
    assert f":{line}: {reason}" in str(err.value)
    dataset, report = load_dataset(tmp_path, skip_bad_rows=True)
    bad = next(f for f in report.files if f.path == str(tmp_path / name))
    assert bad.skipped == {reason: 1}
    assert dataset.log.n_rows == report.files[1].rows_loaded == 5 - report.files[1].rows_skipped


def test_movielens_empty_or_missing_file(tmp_path: Path) -> None:
    write(tmp_path, ratings="\n")
    with pytest.raises(DataError, match="empty file") as err:
        load_dataset(tmp_path, skip_bad_rows=True)
    assert err.value.path == str(tmp_path / "ratings.dat")
    (tmp_path / "movies.dat").unlink()
    with pytest.raises(DataError, match="missing file") as err:
        load_dataset(tmp_path, format="movielens")
    assert err.value.path == str(tmp_path / "movies.dat")
    with pytest.raises(DataError, match="unrecognised data"):
        detect_format(tmp_path)
