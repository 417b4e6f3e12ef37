"""The batch's summary table: ``OUT/summary.csv`` and ``OUT/summary.json``, one row per slide.

Columns (:data:`COLUMNS`): slide, name (its folder in OUT), label, status (``done``,
``failed`` or ``skipped``: done by an earlier run with the same key), prediction,
probabilities (JSON in the CSV), methods, time_s, error (one line), key. The JSON file holds
the same rows as a list under ``"slides"`` with the notice and the counts.

Both files are rewritten whole (:func:`histoview.io.files.write_text`, atomic) each time a
slide finishes, so they grow as the batch goes and a kill never leaves half a table. A later
run reads them (:meth:`Summary.load`) to say what an earlier run left failed; whether a slide
is done is decided by its folder's record (:func:`histoview.batch.task.read_record`), which
is written with the outputs.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

COLUMNS = (
    "slide",
    "name",
    "label",
    "status",
    "prediction",
    "probabilities",
    "methods",
    "time_s",
    "error",
    "key",
)
CSV_NAME, JSON_NAME = "summary.csv", "summary.json"


class Summary:
    """The rows of a batch, in input order, written to ``out_dir`` on :meth:`write`."""

    def __init__(self, out_dir: str | os.PathLike, order: list[str] | None = None):
        self.out_dir = Path(out_dir)
        self.order = list(order or [])
        self.rows: dict[str, dict[str, Any]] = {}

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
        """An earlier run's rows by slide name (empty when there is no readable summary)."""
        try:
            data = json.loads((Path(out_dir) / JSON_NAME).read_text())
            return {row["name"]: row for row in data.get("slides", [])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        row = {c: record.get(c) for c in COLUMNS}
        self.rows[row["name"]] = row
        if row["name"] not in self.order:
            self.order.append(row["name"])
        return row

    def ordered(self) -> list[dict[str, Any]]:
        return [self.rows[n] for n in self.order if n in self.rows]

    def counts(self) -> dict[str, int]:
        counts = {"done": 0, "failed": 0, "skipped": 0}
        for row in self.rows.values():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts

    def write(self) -> tuple[Path, Path]:
        """Rewrite both files atomically; returns (csv path, json path)."""
        from histoview import RESEARCH_NOTICE
        from histoview.io.files import write_text

        rows = self.ordered()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _cell(row[c]) for c in COLUMNS})
        doc = {"notice": RESEARCH_NOTICE, "counts": self.counts(), "slides": rows}
        csv_path = write_text(self.out_dir / CSV_NAME, buf.getvalue(), overwrite=True)
        json_path = write_text(self.out_dir / JSON_NAME, json.dumps(doc, indent=2), overwrite=True)
        return Path(csv_path), Path(json_path)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)):
        return ";".join(map(str, value))
    return str(value)
