"""The Amazon review-dump loader: 2014 (Python-literal metadata), 2018 and 2023 JSON lines, plain and .gz."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.data.loaders import detect_format, load_amazon, load_dataset
from shared.data.loaders import load_report as r
from shared.data.schema import EVENT_CODE, UNKNOWN_TIME
from shared.errors import DataError

META_2014 = [
    {"asin": "B0", "title": "Nobody reviewed me", "categories": [["Beauty"]]},
    {
        "asin": "B1",
        "title": "Rosy's Lip Balm",
        "price": 3.5,
        "brand": "Rosy",
        "categories": [["Beauty", "Makeup", "Lips"], ["Gifts"]],
        "description": "Soft.",
        "related": {"also_bought": ["B2"]},
        "salesRank": {"Beauty": 10},
    },
    {"asin": "B2", "title": "Soap &amp; Suds", "categories": [["Beauty", "Bath"]]},
]
# user A1's reviews are out of time order (with a tie at 200 that file order decides)
REVIEWS_2014 = [
    {"reviewerID": "A1", "asin": "B2", "overall": 5.0, "unixReviewTime": 300, "reviewText": "secret text"},
    {"reviewerID": "A2", "asin": "B1", "overall": 3.0, "unixReviewTime": 100},
    {"reviewerID": "A1", "asin": "B1", "overall": 4.0, "unixReviewTime": 200},
    {"reviewerID": "A1", "asin": "B2", "overall": 2.0, "unixReviewTime": 200},
]


def write_lines(path: Path, lines: list[str | bytes] | list[str]) -> Path:
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_2014(
    folder: Path, gz: str = "", meta: list[str] | None = None, reviews: list[str] | None = None
) -> Path:
    write_lines(folder / f"meta_Beauty.json{gz}", meta if meta is not None else [repr(m) for m in META_2014])
    reviews = reviews if reviews is not None else [json.dumps(x) for x in REVIEWS_2014]
    return write_lines(folder / f"reviews_Beauty_5.json{gz}", reviews)


def log_rows(dataset: Any) -> list[tuple[str, str, int, float]]:
    log, cat = dataset.log, dataset.catalogue
    cols = zip(log.user, log.item, log.timestamp, log.value, strict=True)
    return [(log.user_ids[u], cat.item_ids[i], int(t), float(v)) for u, i, t, v in cols]


@pytest.mark.parametrize("gz", ["", ".gz"])
def test_amazon_2014_python_literal_metadata(tmp_path: Path, gz: str) -> None:
    write_2014(tmp_path, gz)
    assert detect_format(tmp_path) == "amazon2014"
    dataset, report = load_dataset(tmp_path)
    cat = dataset.catalogue
    assert dataset.name == "Beauty_5"
    assert cat.item_ids == ["B1", "B2"]  # metadata file order; B0 has no review and is left out
    assert cat.titles == ["Rosy's Lip Balm", "Soap & Suds"]
    assert cat.categories == ["Beauty > Makeup > Lips", "Beauty > Bath"]
    assert cat.brands == ["Rosy", ""] and cat.descriptions == ["Soft.", ""]
    np.testing.assert_array_equal(cat.price, np.array([3.5, np.nan], dtype=np.float32))
    # A1 keeps positions 0, 2, 3 with rows in time order; the tie at 200 stays in file order (B1 then B2)
    assert log_rows(dataset) == [
        ("A1", "B1", 200, 4.0),
        ("A2", "B1", 100, 3.0),
        ("A1", "B2", 200, 2.0),
        ("A1", "B2", 300, 5.0),
    ]
    assert (dataset.log.event == EVENT_CODE["purchase"]).all()
    meta_report = report.files[1]
    assert (meta_report.rows_read, meta_report.rows_loaded, meta_report.skipped) == (3, 2, {})
    assert any("1 metadata rows of items without reviews" in n for n in report.notes)
    assert any("1 of 2 users reordered" in n for n in report.notes)


def test_amazon_2018_json_lines_gzipped(tmp_path: Path) -> None:
    meta = [
        {"asin": "S1", "title": "Beaker", "category": ["Industrial & Scientific", "Lab"], "brand": "Pyrex",
         "price": "$1,012.99", "description": ["Glass", "500 ml"], "date": "June 4, 2015"},
        {"asin": "S2", "title": "Gloves", "category": [], "main_cat": "Industrial &amp; Scientific",
         "price": "<span>.a-box{}</span>", "description": "Nitrile"},
    ]  # fmt: skip
    reviews = [
        {"overall": 4.0, "reviewerID": "R1", "asin": "S2", "unixReviewTime": 1_500_000_000, "verified": True},
        {"overall": 1.0, "reviewerID": "R1", "asin": "S1", "unixReviewTime": 1_500_000_001},
    ]
    write_lines(tmp_path / "meta_Industrial_and_Scientific.json.gz", [json.dumps(m) for m in meta])
    write_lines(tmp_path / "Industrial_and_Scientific_5.json.gz", [json.dumps(x) for x in reviews])
    assert detect_format(tmp_path) == "amazon-jsonl"
    dataset, report = load_dataset(tmp_path)
    cat = dataset.catalogue
    assert cat.categories == ["Industrial & Scientific > Lab", "Industrial & Scientific"]
    assert cat.descriptions == ["Glass 500 ml", "Nitrile"]
    np.testing.assert_array_equal(cat.price, np.array([1012.99, np.nan], dtype=np.float32))
    assert cat.created_at.tolist() == [1_433_376_000, UNKNOWN_TIME]
    assert log_rows(dataset) == [("R1", "S2", 1_500_000_000, 4.0), ("R1", "S1", 1_500_000_001, 1.0)]
    assert any("1 items have a price that could not be read" in n for n in report.notes)


def test_amazon_2023_json_lines(tmp_path: Path) -> None:
    meta: dict[str, Any] = {"main_category": "All Beauty", "title": "Comb", "description": [], "price": None,
        "store": "Combs Inc", "categories": [], "details": {"Date First Available": "March 21, 2019"},
        "parent_asin": "C1"}  # fmt: skip
    reviews = [
        {
            "rating": 5.0,
            "asin": "C1-red",
            "parent_asin": "C1",
            "user_id": "U1",
            "timestamp": 1_588_687_728_923,
        },
        {
            "rating": 4,
            "asin": "C1-blue",
            "parent_asin": "C1",
            "user_id": "U2",
            "timestamp": 1_588_687_000_000,
        },
    ]
    write_lines(tmp_path / "meta_All_Beauty.jsonl", [json.dumps(meta)])
    reviews_file = write_lines(tmp_path / "All_Beauty.jsonl", [json.dumps(x) for x in reviews])
    dataset, report = load_amazon(reviews_file)
    assert report.format == "amazon-jsonl"
    cat = dataset.catalogue
    assert (cat.item_ids, cat.brands, cat.categories) == (["C1"], ["Combs Inc"], ["All Beauty"])
    assert cat.created_at.tolist() == [1_553_126_400] and np.isnan(cat.price[0])
    assert log_rows(dataset) == [("U1", "C1", 1_588_687_728, 5.0), ("U2", "C1", 1_588_687_000, 4.0)]
    assert not any("price" in n for n in report.notes)  # no price given is not an unreadable price


GOOD = [json.dumps(x) for x in REVIEWS_2014]
GOOD_META = [repr(m) for m in META_2014]


def put(lines: list[str], line: int, bad: str | bytes) -> list[str | bytes]:
    """`lines` with `bad` inserted so that it is line number `line`."""
    return [*lines[: line - 1], bad, *lines[line - 1 :]]


def review(**fields: Any) -> str:
    return json.dumps({"reviewerID": "A9", "asin": "B1", "overall": 1.0, "unixReviewTime": 1} | fields)


BAD = [
    ("reviews", put(GOOD, 2, '{"reviewerID": "A9", "asin": '), 2, r.MALFORMED_LINE),
    ("reviews", put(GOOD, 2, '["not", "an", "object"]'), 2, r.MALFORMED_LINE),
    ("reviews", put(GOOD, 5, review(reviewerID=None)), 5, r.MISSING_FIELD),
    ("reviews", put(GOOD, 3, review(asin="")), 3, r.MISSING_FIELD),
    ("reviews", put(GOOD, 3, review(unixReviewTime="soon")), 3, r.BAD_TIMESTAMP),
    ("reviews", put(GOOD, 3, review(unixReviewTime=-1)), 3, r.BAD_TIMESTAMP),
    ("reviews", put(GOOD, 1, review(overall="five")), 1, r.BAD_VALUE),
    ("reviews", put(GOOD, 4, review(asin="B7")), 4, r.MISSING_ITEM),
    ("reviews", put(GOOD, 2, review(t="é").replace("\\u00e9", "é").encode("latin-1")), 2, r.BAD_ENCODING),
    ("meta", put(GOOD_META, 4, repr({"asin": "B2", "title": "again"})), 4, r.DUPLICATE_ITEM),
    ("meta", put(GOOD_META, 2, "{'asin': 'B1', 'title': 'Rosy'"), 2, r.MALFORMED_LINE),
    ("meta", put(GOOD_META, 4, "{'title': 'no id'}"), 4, r.MISSING_FIELD),
]


@pytest.mark.parametrize(("which", "lines", "line", "reason"), BAD)
def test_amazon_bad_row_names_file_and_line(
    tmp_path: Path, which: str, lines: list[Any], line: int, reason: str
) -> None:
    reviews = write_2014(tmp_path, reviews=lines) if which == "reviews" else write_2014(tmp_path, meta=lines)
    bad_file = reviews if which == "reviews" else tmp_path / "meta_Beauty.json"
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path)
    assert (err.value.path, err.value.line) == (str(bad_file), line)
    assert f":{line}: {reason}" in str(err.value)
    assert "A9" not in str(err.value) and "secret" not in str(err.value)  # no user ids or review contents

    dataset, report = load_dataset(tmp_path, skip_bad_rows=True)
    assert report.skipped == {reason: 1}
    assert dataset.log.n_rows == 4 and dataset.catalogue.item_ids == ["B1", "B2"]
    assert dataset.log.user_ids == ["A1", "A2"]  # A9, whose only row was bad, is not a user


def test_amazon_missing_item_message_names_the_item(tmp_path: Path) -> None:
    write_2014(tmp_path, reviews=[*GOOD, json.dumps({"reviewerID": "A9", "asin": "B7", "unixReviewTime": 1})])
    with pytest.raises(DataError, match="item 'B7' has no metadata"):
        load_dataset(tmp_path)


def test_amazon_metadata_is_never_evaluated_as_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = f"{{'asin': 'B1', 'title': open({str(marker)!r}, 'w').name}}"
    write_2014(tmp_path, meta=[evil, *GOOD_META])
    with pytest.raises(DataError, match="malformed line") as err:
        load_dataset(tmp_path)
    assert err.value.line == 1 and not marker.exists()


def test_amazon_jsonl_metadata_must_be_json(tmp_path: Path) -> None:
    write_lines(tmp_path / "meta_Tools.json", [repr(m) for m in META_2014])  # 2014-style lines, 2018 names
    write_lines(tmp_path / "Tools.json", GOOD)
    with pytest.raises(DataError, match="not a JSON object") as err:
        load_dataset(tmp_path)
    assert err.value.line == 2  # line 1 is B0, which nobody reviewed: it is not parsed
    dataset, _ = load_dataset(tmp_path, format="amazon2014")
    assert dataset.catalogue.item_ids == ["B1", "B2"]


def test_amazon_file_problems(tmp_path: Path) -> None:
    reviews = write_2014(tmp_path, ".gz")
    reviews.write_bytes(reviews.read_bytes()[:-12])  # a truncated download
    with pytest.raises(DataError, match="unreadable file") as err:
        load_dataset(tmp_path)
    assert err.value.path == str(reviews)
    write_2014(tmp_path, ".gz", reviews=[])
    with pytest.raises(DataError, match="empty file"):
        load_dataset(tmp_path, skip_bad_rows=True)
    write_2014(tmp_path)  # now two pairs in one folder
    with pytest.raises(DataError, match="several Amazon review files"):
        load_dataset(tmp_path)
    dataset, _ = load_dataset(tmp_path / "reviews_Beauty_5.json")  # naming the file resolves it
    assert dataset.log.n_rows == 4
    write_2014(tmp_path, reviews=[json.dumps({"reviewerID": "A1", "asin": "B9", "unixReviewTime": 1})])
    with pytest.raises(DataError, match="no usable metadata row") as err:
        load_dataset(tmp_path / "reviews_Beauty_5.json", skip_bad_rows=True)
    write_2014(tmp_path, reviews=["{", "[]"])
    with pytest.raises(DataError, match="no usable rows: all 2 rows were bad") as err:
        load_dataset(tmp_path / "reviews_Beauty_5.json", skip_bad_rows=True)
    assert err.value.path == str(tmp_path / "reviews_Beauty_5.json")
