"""Query results as text for the command line: an aligned table, CSV or JSON
(``neuroscope sql --format``), whatever types DuckDB hands back."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import uuid
from typing import Any

import numpy as np
import pandas as pd

FORMATS = ("table", "csv", "json")
_LIST_ITEMS = 8  # list cells show this many items in a table, then "…"


def format_result(df: pd.DataFrame, fmt: str = "table", max_width: int = 40) -> str:
    """Rows as text for the CLI: an aligned table (long cells cut to ``max_width``), or full
    CSV / JSON (a list of objects; lists stay lists, NaN becomes null)."""
    if fmt == "csv":
        return _plain(df).to_csv(index=False)
    if fmt == "json":
        return json_records(df) + "\n"
    if fmt == "table":
        return _table_text(df, max_width)
    raise ValueError(f"format {fmt!r} but expected one of {FORMATS}")


def json_records(df: pd.DataFrame) -> str:
    """Rows as a JSON list of objects, whatever DuckDB handed back: decimals, dates and times,
    intervals, blobs (base64), UUIDs, lists, structs and maps; NaN and infinities become null."""
    names = [str(c) for c in df.columns]
    rows = [dict(zip(names, map(_json_value, row))) for row in df.itertuples(index=False, name=None)]
    return json.dumps(rows, ensure_ascii=False, allow_nan=False)


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return str(value) if not value.is_finite() else (int(value) if value == value.to_integral_value() else float(value))
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (dt.datetime, dt.date, dt.time, pd.Timestamp)):
        return value.isoformat()
    if isinstance(value, (dt.timedelta, pd.Timedelta, np.timedelta64)):
        return pd.Timedelta(value).isoformat()
    if isinstance(value, pd.DateOffset):  # a DuckDB INTERVAL with months
        return {k: int(getattr(value, k, 0) or 0) for k in ("months", "days", "nanoseconds")}
    if isinstance(value, np.datetime64):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        # DuckDB MAPs arrive as lists of (key, value) pairs or as {'key': [...], 'value': [...]}.
        return [_json_value(v) for v in value]
    return str(value)


def _table_text(df: pd.DataFrame, max_width: int) -> str:
    headers = [str(c) for c in df.columns]
    series = [df.iloc[:, i] for i in range(df.shape[1])]  # by position: names may repeat
    columns = [[_cell(v, max_width) for v in s] for s in series]
    widths = [max([len(h)] + [len(x) for x in col]) for h, col in zip(headers, columns)]
    numeric = [pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) for s in series]

    def line(values: list[str]) -> str:
        cells = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))
        return "  ".join(cells).rstrip()

    lines = [line(headers), line(["-" * w for w in widths])]
    lines += [line([col[i] for col in columns]) for i in range(len(df))]
    lines.append(f"({len(df)} row{'' if len(df) == 1 else 's'})")
    return "\n".join(lines) + "\n"


def _cell(value: Any, max_width: int) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        shown = ", ".join(_scalar(x) for x in items[:_LIST_ITEMS])
        text = f"[{shown}{', …' if len(items) > _LIST_ITEMS else ''}]"
    else:
        text = _scalar(value)
    text = text.replace("\n", "\\n").replace("\t", "\\t")  # one row per line
    return text if len(text) <= max_width else text[: max_width - 1] + "…"


def _scalar(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and value != value):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.6g}"
    return str(value)


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose list cells are Python lists (numpy arrays print with no commas)."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = [v.tolist() if hasattr(v, "tolist") else v for v in out[c]]
    return out
