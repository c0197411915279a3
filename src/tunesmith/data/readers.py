"""Read records from JSONL, JSON, CSV/TSV, Parquet, plain text or a saved HF dataset.

Every record carries `_source` ("file:line") so later checks can say where a bad record is.
"""

import csv
import io
import json
from pathlib import Path

from ..errors import DataError
from ..utils.paths import read_text

SOURCE = "_source"


def read_records(path, file_type: str = "auto", columns=()) -> list[dict]:
    """All records of a data file as dicts. Raises DataError for a missing, unreadable or empty file.

    file_type overrides the suffix (e.g. "tsv" for a file named without one); columns names the
    fields of a CSV/TSV file that has no header row.
    """
    p = Path(path)
    if p.is_dir():
        return _read_hf_dataset(p)
    if not p.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = p.suffix.lower() if file_type == "auto" else "." + file_type
    columns = list(columns)
    readers = {
        ".jsonl": _read_jsonl,
        ".json": _read_json,
        ".csv": lambda q: _read_csv(q, False, columns),
        ".tsv": lambda q: _read_csv(q, True, columns),
        ".parquet": _read_parquet,
        ".txt": _read_text,
    }
    if suffix not in readers:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .tsv, .parquet or .txt, "
            f"or set data.file_type"
        )
    if columns and suffix not in (".csv", ".tsv"):
        raise DataError(
            f"{path}: data.columns names the fields of a header-less CSV/TSV file, but this is {suffix}"
        )
    records = readers[suffix](p)
    if not records:
        raise DataError(f"{path}: no records found (the file is empty)")
    return records


def _read_jsonl(p: Path) -> list[dict]:
    records = []
    # split on "\n" only: str.splitlines would also split inside strings holding U+2028
    for lineno, line in enumerate(read_text(p).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
        records.append(_as_record(obj, f"{p}:{lineno}"))
    return records


def _read_json(p: Path) -> list[dict]:
    try:
        data = json.loads(read_text(p))
    except json.JSONDecodeError as e:
        hint = (
            "; one object per line is JSONL: name it .jsonl or set data.file_type: jsonl"
            if e.msg == "Extra data"
            else ""
        )
        raise DataError(f"{p}:{e.lineno}: not valid JSON ({e.msg}){hint}") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} wrappers
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of records")
    return [_as_record(obj, f"{p}:record {i + 1}") for i, obj in enumerate(data)]


def _read_csv(p: Path, tsv: bool = False, columns=None) -> list[dict]:
    reader = csv.DictReader(
        io.StringIO(read_text(p), newline=""),
        fieldnames=columns or None,
        delimiter="\t" if tsv else ",",
        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
    )
    records = []
    try:
        for row in reader:
            if None in row:
                raise DataError(
                    f"{p}:{reader.line_num}: more fields than {'data.columns' if columns else 'the header'} "
                    f"names ({len(reader.fieldnames)})"
                )
            records.append({**row, SOURCE: f"{p}:{reader.line_num}"})
    except csv.Error as e:  # e.g. a field over csv's size limit, an unclosed quote in strict mode
        raise DataError(
            f"{p}:{reader.line_num}: not valid {'TSV' if tsv else 'CSV'} ({e})"
        ) from None
    return records


def _read_parquet(p: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install pyarrow") from None
    import pyarrow as pa

    try:
        rows = pq.read_table(p).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"{p}: not a readable Parquet file ({(str(e).splitlines() or [type(e).__name__])[0]})"
        ) from None
    return [_as_record(r, f"{p}:row {i + 1}") for i, r in enumerate(rows)]


def _read_text(p: Path) -> list[dict]:
    lines = read_text(p).splitlines()
    return [{"text": line, SOURCE: f"{p}:{i}"} for i, line in enumerate(lines, 1) if line.strip()]


def _read_hf_dataset(p: Path) -> list[dict]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise DataError(
            f"{p} is a directory; reading a saved HF dataset needs `pip install datasets`"
        ) from None
    try:
        ds = load_from_disk(str(p))
    except FileNotFoundError:
        raise DataError(f"{p}: not a dataset saved with datasets.save_to_disk") from None
    if hasattr(ds, "keys"):  # a DatasetDict: take its train split
        ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
    return [_as_record(r, f"{p}:row {i + 1}") for i, r in enumerate(ds)]


def _as_record(obj, source: str) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected an object with fields, got {type(obj).__name__}")
    return {**obj, SOURCE: source}
