"""Row files out: a table written chunk by chunk in the format of its name (.jsonl, .csv,
.parquet), and the side file of rejected rows. Each writes to a temporary path that the caller
renames onto the target once the last row is in (:mod:`orm_cache.outputs`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError

OUTPUT_EXTS = (".jsonl", ".csv", ".parquet")


class OutputWriter:
    """Streams rows, chunk by chunk, to ``tmp`` in the format of ``path``'s extension (.jsonl,
    .csv or .parquet). It never touches ``path``: the caller renames ``tmp`` onto it once the
    last row is written (:mod:`orm_cache.outputs`)."""

    def __init__(self, path: str | Path, tmp: Path):
        self.path, self.tmp = Path(path), tmp
        self.ext = check_output_ext(self.path)
        self._f = None
        self._writer = None
        self._fields = None
        self.rows = 0

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self.ext == ".jsonl":
            if self._f is None:
                self._f = open(self.tmp, "w", encoding="utf-8")
            for r in rows:
                self._f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        else:
            self._check_columns(rows)
            if self.ext == ".csv":
                self._write_csv(rows)
            else:
                self._write_parquet(rows)
        self.rows += len(rows)

    def _check_columns(self, rows: list[dict]) -> None:
        """CSV and Parquet have one column set for the whole file: every column of the first chunk
        (a row may lack some: empty/null there); a column first seen later is refused, never dropped."""
        if self._fields is None:
            self._fields = list(dict.fromkeys(k for r in rows for k in r))
            return
        known = set(self._fields)
        for i, r in enumerate(rows):
            new = [k for k in r if k not in known]
            if new:
                raise DataError(f"{self.path}: output row {self.rows + i + 1} has column(s) {new} that the first "
                                f"{self.rows:,} rows lack, and a {self.ext[1:].upper()} file has one set of columns; "
                                "raise --chunk-rows, write .jsonl, or give every row the same columns")

    def _write_csv(self, rows: list[dict]) -> None:
        import csv

        if self._f is None:
            self._f = open(self.tmp, "w", newline="", encoding="utf-8")
            self._writer = csv.DictWriter(self._f, self._fields)
            self._writer.writeheader()
        nested = (dict, list, tuple)  # written as JSON, not as Python's repr
        self._writer.writerows({k: json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, nested) else v
                                for k, v in r.items()} for r in rows)

    def _write_parquet(self, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.table({k: [r.get(k) for r in rows] for k in self._fields})  # every column, null where absent
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.tmp, table.schema)
            table = table.cast(self._writer.schema)
        except (pa.ArrowException, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{self.path}: the rows from output row {self.rows + 1} on do not fit the columns and "
                            f"types of the rows before ({str(e).splitlines()[0]}); raise --chunk-rows so the "
                            "first chunk sees every type, or write .jsonl") from None
        self._writer.write_table(table)

    def close(self) -> None:
        """Finish the file (an input with no valid rows gives an empty output: for Parquet,
        a valid file with no rows)."""
        if self.ext == ".parquet" and self._writer is None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"score": pa.array([], pa.float64())}), self.tmp)
        if self._writer is not None and self.ext == ".parquet":
            self._writer.close()
        if self._f is not None:
            self._f.close()


def check_output_ext(path: Path) -> str:
    ext = Path(path).suffix.lower()
    if ext not in OUTPUT_EXTS:
        raise DataError(f"{path}: output must be {', '.join(OUTPUT_EXTS)}")
    return ext


def _input_rows(path: Path) -> int | None:
    """Rows in the input when that is cheap to know (progress totals): Parquet's metadata, or
    the non-blank lines of a JSON-lines file (counted in binary blocks); else None."""
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        if name.endswith(".jsonl"):
            n, last = 0, b"\n"
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    n += block.count(b"\n") - block.count(b"\n\n")  # blank lines are skipped by the reader
                    last = block[-1:]
            return n + (last != b"\n")
    except Exception:  # a bad file is reported by the reader, with its name
        return None
    return None


def rejected_path_for(output_path) -> Path:
    """``scored.parquet`` -> ``scored.parquet.rejected.jsonl``: where --skip-invalid writes bad
    rows (the whole output name, so two outputs never share a side file)."""
    p = Path(output_path)
    return p.with_name(p.name + ".rejected.jsonl")


class RejectWriter:
    """Side file of rows that failed validation, each with its row number and reason, streamed
    to ``tmp`` (renamed onto ``path`` with the output, so it always describes this run)."""

    def __init__(self, path: Path, tmp: Path):
        self.path = path
        self._f = open(tmp, "w", encoding="utf-8")

    def add(self, lineno: int, row: dict, reason: str) -> None:
        self._f.write(json.dumps({"row": lineno, "reason": reason, "data": row}, ensure_ascii=False, default=str)
                      + "\n")

    def close(self) -> None:
        self._f.close()
