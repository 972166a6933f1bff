"""The project CSV layout and the dispatcher: row order, optional columns, each kind of bad input."""

from __future__ import annotations

import gzip
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.data.loaders import detect_format, load_csv, load_dataset, save_csv
from shared.data.loaders import load_report as r
from shared.data.loaders.common import sort_within_users
from shared.data.schema import EVENT_CODE, EVENT_TYPES, UNKNOWN_TIME, Catalogue, Dataset, InteractionLog
from shared.errors import DataError

ITEMS = (
    "item_id,title,category,brand,asin\n"  # line 1
    "007,Lip balm,Makeup > Lips,Acme,B01\n"  # line 2
    "8,Shampoo,Hair,,B02\n"  # line 3
    "9,Soap,Bath,Suds,B03\n"  # line 4
)
# Users interleaved, u1's timestamps not in order, a tie: the loader must keep this order exactly.
INTERACTIONS = "user_id,item_id,timestamp\nu1,9,300\nu2,007,100\nu1,8,200\nu1,007,200\nu2,9,150\n"


def write(folder: Path, items: str | bytes = ITEMS, interactions: str | bytes = INTERACTIONS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (("items.csv", items), ("interactions.csv", interactions)):
        data = content.encode("utf-8") if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return folder


def rows(dataset: Dataset) -> list[tuple[str, str, int]]:
    log, cat = dataset.log, dataset.catalogue
    return [
        (log.user_ids[u], cat.item_ids[i], int(t))
        for u, i, t in zip(log.user, log.item, log.timestamp, strict=True)
    ]


def test_csv_keeps_file_row_order_and_string_ids(tmp_path: Path) -> None:
    dataset, report = load_csv(write(tmp_path / "shop"))
    assert dataset.name == "shop"
    assert dataset.catalogue.item_ids == ["007", "8", "9"]  # "007" is not turned into 7
    assert dataset.catalogue.brands == ["Acme", "", "Suds"]
    assert rows(dataset) == [
        ("u1", "9", 300),
        ("u2", "007", 100),
        ("u1", "8", 200),
        ("u1", "007", 200),
        ("u2", "9", 150),
    ]
    assert (
        dataset.log.event == EVENT_CODE["purchase"]
    ).all()  # no event column: a review stands for a purchase
    assert np.isnan(dataset.log.value).all()
    assert [(f.rows_read, f.rows_loaded, f.skipped) for f in report.files] == [(3, 3, {}), (5, 5, {})]
    assert any("1 users have rows out of timestamp order" in note for note in report.notes)


def test_csv_optional_columns(tmp_path: Path) -> None:
    items = (
        "item_id,title,category,brand,asin,description,price,created_at,on_promotion,colour\n"
        "a,Red lipstick,Makeup,Acme,,Long lasting,12.5,1700000000,1,red\n"
        "b,Mascara,Makeup,,,,,2024-01-02T00:00:00,false,\n"
        "c,Comb,Hair,,,,0,,,\n"
    )
    interactions = (
        "user_id,item_id,timestamp,event,value\n"
        "u,a,5,view,\nu,b,6,cart,2\nu,c,7,,\nv,a,8,Favorite,\nv,b,9,rating,4.5\n"
    )
    dataset, report = load_csv(write(tmp_path, items, interactions))
    cat, log = dataset.catalogue, dataset.log
    assert cat.descriptions == ["Long lasting", "", ""]
    np.testing.assert_array_equal(cat.price, np.array([12.5, np.nan, 0.0], dtype=np.float32))
    assert cat.created_at.tolist() == [1_700_000_000, 1_704_153_600, UNKNOWN_TIME]
    assert cat.on_promotion.tolist() == [True, False, False]
    assert [EVENT_TYPES[e] for e in log.event] == ["view", "cart", "purchase", "favourite", "rating"]
    np.testing.assert_array_equal(log.value, np.array([np.nan, 2, np.nan, np.nan, 4.5], dtype=np.float32))
    assert any("colour" in note for note in report.notes)  # an unknown column is ignored, but not silently


_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\r"), max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    n_items=st.integers(1, 6),
    n_rows=st.integers(1, 12),
)
def test_csv_round_trip(tmp_path: Path, data: st.DataObject, n_items: int, n_rows: int) -> None:
    """save_csv then load_csv gives back every field, with commas, quotes and newlines in the text."""
    floats = st.one_of(st.just(math.nan), st.floats(0, 1e6, width=32))
    cat = Catalogue(
        item_ids=[f'i{k},"{k}"' for k in range(n_items)],
        titles=data.draw(st.lists(_text, min_size=n_items, max_size=n_items)),
        categories=data.draw(st.lists(_text, min_size=n_items, max_size=n_items)),
        brands=data.draw(st.lists(_text, min_size=n_items, max_size=n_items)),
        descriptions=data.draw(st.lists(_text, min_size=n_items, max_size=n_items)),
        price=np.array(data.draw(st.lists(floats, min_size=n_items, max_size=n_items)), dtype=np.float32),
        created_at=np.array(data.draw(st.lists(st.integers(-1, 2**40), min_size=n_items, max_size=n_items))),
        on_promotion=np.array(data.draw(st.lists(st.booleans(), min_size=n_items, max_size=n_items))),
    )
    users = data.draw(st.lists(st.integers(0, 3), min_size=n_rows, max_size=n_rows))
    first_seen = list(dict.fromkeys(users))
    log = InteractionLog(
        user_ids=[f"user {u}" for u in first_seen],
        user=np.array([first_seen.index(u) for u in users], dtype=np.int32),
        item=np.array(
            data.draw(st.lists(st.integers(0, n_items - 1), min_size=n_rows, max_size=n_rows)), dtype=np.int32
        ),
        timestamp=np.array(data.draw(st.lists(st.integers(0, 2**40), min_size=n_rows, max_size=n_rows))),
        event=np.array(
            data.draw(st.lists(st.integers(0, len(EVENT_TYPES) - 1), min_size=n_rows, max_size=n_rows)),
            dtype=np.int8,
        ),
        value=np.array(data.draw(st.lists(floats, min_size=n_rows, max_size=n_rows)), dtype=np.float32),
    )
    folder = tmp_path / f"rt{data.draw(st.integers(0, 10**9))}"
    save_csv(Dataset("x", cat, log), folder)
    back, report = load_csv(folder)
    got = back.catalogue
    assert got.item_ids == cat.item_ids and got.titles == cat.titles and got.categories == cat.categories
    assert got.brands == cat.brands and got.descriptions == cat.descriptions
    np.testing.assert_array_equal(got.price, cat.price)
    assert (
        got.created_at.tolist() == cat.created_at.tolist()
        and got.on_promotion.tolist() == cat.on_promotion.tolist()
    )
    assert back.log.user_ids == log.user_ids
    for name in ("user", "item", "timestamp", "event", "value"):
        np.testing.assert_array_equal(getattr(back.log, name), getattr(log, name))
    assert report.rows_skipped == 0


def test_csv_gzipped_files_and_multiline_fields(tmp_path: Path) -> None:
    items = 'item_id,title,category,brand\n2,Soap,Bath,\n1,"Cream\nVanilla",Skin,\n3,Oil,Bath,\n'
    interactions = "user_id,item_id,timestamp\nu,1,1\nu,2,2\n"
    (tmp_path / "items.csv.gz").write_bytes(gzip.compress(items.encode()))
    (tmp_path / "interactions.csv.gz").write_bytes(gzip.compress(interactions.encode()))
    dataset, _ = load_dataset(tmp_path)
    assert dataset.catalogue.titles == ["Soap", "Cream\nVanilla", "Oil"]
    # line numbers count physical lines, and name the line where a multi-line row starts
    cases = [
        (items.replace('1,"Cream', '2,"Cream'), 3),  # the duplicate row spans lines 3-4
        (items.replace("3,Oil", "2,Oil"), 5),
        (items.replace("Vanilla", 'Vanilla"x'), 3),  # not valid CSV
    ]
    for bad_items, line in cases:
        (tmp_path / "items.csv.gz").write_bytes(gzip.compress(bad_items.encode()))
        with pytest.raises(DataError) as err:
            load_dataset(tmp_path)
        assert err.value.path == str(tmp_path / "items.csv.gz") and err.value.line == line


def items_with(column: str, *values: str) -> str:
    """ITEMS with its last column (asin) replaced by `column` holding `values`."""
    text = ITEMS.replace("brand,asin", f"brand,{column}")
    for old, new in zip(("B01", "B02", "B03"), values, strict=True):
        text = text.replace(f",{old}\n", f",{new}\n")
    return text


# (file, bad content, line, reason): one bad row in an otherwise good file
BAD_ROWS = [
    ("interactions.csv", INTERACTIONS.replace("u2,007,100", "u2,007,yesterday"), 3, r.BAD_TIMESTAMP),
    ("interactions.csv", INTERACTIONS.replace("u2,007,100", "u2,007,-5"), 3, r.BAD_TIMESTAMP),
    ("interactions.csv", INTERACTIONS.replace("u1,8,200", "u1,404,200"), 4, r.MISSING_ITEM),
    ("interactions.csv", INTERACTIONS.replace("u1,8,200", "u1,8"), 4, r.WRONG_FIELD_COUNT),
    ("interactions.csv", INTERACTIONS.replace("u1,8,200", ",8,200"), 4, r.MISSING_FIELD),
    ("interactions.csv", INTERACTIONS.replace("u1,8,200", 'u1,"8"x,200'), 4, r.MALFORMED_LINE),
    (
        "interactions.csv",
        "user_id,item_id,timestamp,event\nu1,9,1,view\nu1,8,2,click\nu2,9,3,\n",
        3,
        r.BAD_EVENT,
    ),
    ("interactions.csv", "user_id,item_id,timestamp,value\nu1,9,1,\nu1,8,2,4\nu2,9,3,lots\n", 4, r.BAD_VALUE),
    ("items.csv", ITEMS.replace("8,Shampoo", "007,Shampoo"), 3, r.DUPLICATE_ITEM),
    ("items.csv", ITEMS.replace("Shampoo", "Shampoo, extra"), 3, r.WRONG_FIELD_COUNT),
    ("items.csv", items_with("price", "1.5", "", "cheap"), 4, r.BAD_PRICE),
    ("items.csv", items_with("price", "1.5", "-2", "3"), 3, r.BAD_PRICE),
    ("items.csv", items_with("created_at", "1", "soon", ""), 3, r.BAD_TIMESTAMP),
    ("items.csv", items_with("on_promotion", "1", "", "maybe"), 4, r.BAD_FLAG),
    ("items.csv", ITEMS.encode().replace(b"Shampoo", "Shampoo café".encode("latin-1")), 3, r.BAD_ENCODING),
]


@pytest.mark.parametrize(("name", "content", "line", "reason"), BAD_ROWS)
def test_csv_bad_row_names_file_and_line(
    tmp_path: Path, name: str, content: str | bytes, line: int, reason: str
) -> None:
    write(tmp_path, **{name.removesuffix(".csv"): content})
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path)
    assert err.value.path == str(tmp_path / name) and err.value.line == line
    assert str(err.value).startswith(f"{tmp_path / name}:{line}: {reason}")
    assert "u1" not in str(err.value) and "u2" not in str(err.value)  # no user ids in messages


def test_a_bad_row_says_how_to_skip_it_with_the_flag_and_the_config_key(tmp_path: Path) -> None:
    write(tmp_path, interactions=INTERACTIONS + "u3,9\n")
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path)
    message = str(err.value)
    assert "--skip-bad-rows" in message and "data.skip_bad_rows" in message
    assert "skip_bad_rows=True" not in message  # the Python keyword means nothing on a command line


@pytest.mark.parametrize(("name", "content", "line", "reason"), BAD_ROWS)
def test_csv_skip_mode_counts_the_bad_row(
    tmp_path: Path, name: str, content: str | bytes, line: int, reason: str
) -> None:
    write(tmp_path, **{name.removesuffix(".csv"): content})
    dataset, report = load_dataset(tmp_path, skip_bad_rows=True)
    items, interactions = report.files
    bad, other = (items, interactions) if name == "items.csv" else (interactions, items)
    assert bad.path == str(tmp_path / name)
    assert bad.skipped == {reason: 1} and bad.rows_loaded == bad.rows_read - 1
    # a skipped item makes its interactions refer to a missing item: those are skipped and counted too
    if name == "items.csv":
        lost = {3: "8", 4: "9"}[line]  # ITEMS' item on that line
        n_lost = sum(row.split(",")[1] == lost for row in INTERACTIONS.splitlines()[1:])
        assert other.skipped == {r.MISSING_ITEM: n_lost}
    else:
        assert other.skipped == {}
    assert (
        dataset.log.n_rows == interactions.rows_loaded == interactions.rows_read - interactions.rows_skipped
    )


def test_csv_skip_mode_counts_by_reason_keeps_order_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    interactions = "user_id,item_id,timestamp\nu1,9,1\nu1,x,2\nu2,8,bad\nu1,y,3\nu2,007,4\nu1,8,5\n"
    with caplog.at_level(logging.INFO):
        dataset, report = load_dataset(write(tmp_path, interactions=interactions), skip_bad_rows=True)
    assert report.skipped == {r.MISSING_ITEM: 2, r.BAD_TIMESTAMP: 1}
    assert (report.files[1].rows_read, report.files[1].rows_loaded) == (6, 3)
    assert rows(dataset) == [("u1", "9", 1), ("u2", "007", 4), ("u1", "8", 5)]
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "missing item: 2" in warnings[0].getMessage()
    assert "skipped (bad timestamp: 1, missing item: 2)" in report.summary()


def test_csv_title_only_catalogue_loads_with_empty_optional_columns(tmp_path: Path) -> None:
    """Many real catalogues (amazon_health, amazon_clothing) hold only an id and a title."""
    dataset, report = load_csv(write(tmp_path, items="item_id,title\n007,Lip balm\n8,Shampoo\n9,Soap\n"))
    cat = dataset.catalogue
    assert cat.item_ids == ["007", "8", "9"] and cat.titles == ["Lip balm", "Shampoo", "Soap"]
    assert cat.categories == ["", "", ""] and cat.brands == ["", "", ""] and cat.descriptions == ["", "", ""]
    assert np.isnan(cat.price).all() and (cat.created_at == UNKNOWN_TIME).all() and not cat.on_promotion.any()
    assert len(rows(dataset)) == 5 and report.skipped == {}
    save_csv(dataset, tmp_path / "again")  # and it writes back to a layout that reads the same
    again, _ = load_csv(tmp_path / "again")
    assert again.catalogue.titles == cat.titles and rows(again) == rows(dataset)


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("interactions.csv", "user_id,item_id,when\nu,007,1\n", "missing column(s) timestamp"),
        ("items.csv", "item_id,category\n1,Bath\n", "missing column(s) title"),
        ("items.csv", "item_id,title,category,brand,Title\n", "duplicate column names"),
        ("interactions.csv", "", "empty file"),
        ("items.csv", "item_id,title,category,brand\n", "empty file"),
    ],
)
def test_csv_file_level_errors_raise_even_when_skipping(
    tmp_path: Path, skip: bool, name: str, content: str, message: str
) -> None:
    write(tmp_path, **{name.removesuffix(".csv"): content})
    with pytest.raises(DataError) as err:
        load_csv(tmp_path, skip_bad_rows=skip)
    assert message in str(err.value)
    assert err.value.path == str(tmp_path / name) and err.value.line == 1


def test_csv_all_rows_bad_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    write(tmp_path, interactions="user_id,item_id,timestamp\nu,404,1\nu,405,1\n")
    with pytest.raises(DataError, match="no usable rows: all 2 rows were bad") as err:
        load_csv(tmp_path, skip_bad_rows=True)
    assert err.value.path == str(tmp_path / "interactions.csv")


def test_missing_file_and_unrecognised_folder(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "interactions.csv").unlink()
    with pytest.raises(DataError, match="unrecognised data"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="missing file") as err:
        load_dataset(tmp_path, format="csv")
    assert err.value.path == str(tmp_path / "interactions.csv")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nowhere")


def test_detect_format_from_a_file_or_its_folder(tmp_path: Path) -> None:
    write(tmp_path)
    assert detect_format(tmp_path) == "csv"
    assert detect_format(tmp_path / "items.csv") == "csv"
    dataset, _ = load_dataset(tmp_path / "interactions.csv")
    assert dataset.log.n_rows == 5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=1, max_size=30))
def test_sort_within_users_is_stable_and_keeps_each_users_positions(pairs: list[tuple[int, int]]) -> None:
    n = len(pairs)
    user = np.array([u for u, _ in pairs], dtype=np.int32)
    log = InteractionLog(
        user_ids=[str(u) for u in range(4)],
        user=user,
        item=np.arange(n, dtype=np.int32),  # the original row number, to check stability
        timestamp=np.array([t for _, t in pairs], dtype=np.int64),
        event=np.zeros(n, dtype=np.int8),
        value=np.zeros(n, dtype=np.float32),
    )
    out, n_moved = sort_within_users(log)
    np.testing.assert_array_equal(out.user, user)  # every position still belongs to the same user
    expected_moved = 0
    for u in range(4):
        mine = [k for k in range(n) if pairs[k][0] == u]
        want = sorted(mine, key=lambda k: pairs[k][1])  # Python's sort is stable
        assert out.item[user == u].tolist() == want
        expected_moved += want != mine
    assert n_moved == expected_moved
