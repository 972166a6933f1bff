"""Load a shop from files into the canonical Dataset: the format is detected from the files present.

Formats: "csv" (the project layout, items.csv + interactions.csv), "movielens" (MovieLens-1M, ratings.dat +
movies.dat), "amazon2014" and "amazon-jsonl" (Amazon review dumps with their meta_ files, 2014 / 2018 / 2023,
plain or gzipped). A bad row raises DataError naming the file and line, or, with skip_bad_rows=True, is
skipped and counted in the LoadReport (and logged once as a summary). Nothing is dropped silently.
"""

from __future__ import annotations

from pathlib import Path

from shared.config import DataFormat
from shared.data.loaders.amazon import find_amazon_files, load_amazon
from shared.data.loaders.csv_layout import INTERACTIONS_FILE, ITEMS_FILE, find_file, load_csv, save_csv
from shared.data.loaders.load_report import FileReport, LoadReport
from shared.data.loaders.movielens import MOVIES_FILE, RATINGS_FILE, load_movielens
from shared.data.schema import Dataset
from shared.errors import DataError

__all__ = [
    "FileReport",
    "LoadReport",
    "detect_format",
    "load_amazon",
    "load_csv",
    "load_dataset",
    "load_movielens",
    "save_csv",
]

_EXPECTED = (
    f"expected {ITEMS_FILE} + {INTERACTIONS_FILE}, {RATINGS_FILE} + {MOVIES_FILE}, "
    "or an Amazon reviews file with its meta_ file"
)


def detect_format(path: Path) -> DataFormat:
    """The format of the data at `path` (a folder, or one of its files) judged by which files are there."""
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise DataError("no such file or folder", path=str(path))
    if find_file(folder, ITEMS_FILE).is_file() and find_file(folder, INTERACTIONS_FILE).is_file():
        return "csv"
    if (folder / RATINGS_FILE).is_file() and (folder / MOVIES_FILE).is_file():
        return "movielens"
    amazon = find_amazon_files(path)
    if amazon is not None:
        return amazon.edition
    raise DataError(f"unrecognised data: {_EXPECTED}", path=str(path))


def load_dataset(
    path: str | Path, *, format: DataFormat = "auto", skip_bad_rows: bool = False
) -> tuple[Dataset, LoadReport]:
    """Load the data at `path` (a folder, or for Amazon a reviews file) into the canonical form.

    Returns the dataset and a LoadReport of rows read and rows skipped by reason, per file. With
    skip_bad_rows=False the first bad row raises DataError naming its file and line.
    """
    path = Path(path)
    chosen = detect_format(path) if format == "auto" else format
    folder = path if path.is_dir() else path.parent
    if chosen == "csv":
        return load_csv(folder, skip_bad_rows=skip_bad_rows)
    if chosen == "movielens":
        return load_movielens(folder, skip_bad_rows=skip_bad_rows)
    if chosen == "amazon2014" or chosen == "amazon-jsonl":
        return load_amazon(path, edition=chosen, skip_bad_rows=skip_bad_rows)
    raise DataError(f"unknown data format {chosen!r}", path=str(path))
