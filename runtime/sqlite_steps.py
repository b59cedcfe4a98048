"""Reading and writing many SQLite rows without giving the interpreter lock away per row.

The sqlite3 module lets go of the interpreter lock around every statement step, and takes
it back after: with another thread computing (the writer, an account folding history),
taking it back waits up to the switch interval (2 ms, `runtime/daemon.py`). One step per
row is then 2 ms per row. So many rows are moved in one step each way:

- `insert_rows`: one multi-row INSERT per 500 rows, not executemany (a store write took
  4 x as long inside the daemon as alone);
- `rows_at_once`: a SELECT's rows come back as one JSON array in one result row (fifty
  accounts draining a store outage's backlog read ~3,000 spool rows/s row by row: a
  200-row page took up to 2 s under load; 6 x faster at once, `bench/pipeline.py --only
  outage`).
"""
from __future__ import annotations

import sqlite3

import orjson

ROWS_PER_STATEMENT = 500


def insert_rows(conn: sqlite3.Connection, head: str, tail: str, rows: list[tuple]) -> None:
    """`head (?,…),(?,…)… tail` for up to 500 rows per statement."""
    if not rows:
        return
    width = len(rows[0])
    one = "(" + ",".join("?" * width) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start:start + ROWS_PER_STATEMENT]
        conn.execute(f"{head} {','.join([one] * len(chunk))} {tail}", [value for row in chunk for value in row])


def rows_at_once(conn: sqlite3.Connection, columns: str, select: str, args: tuple = ()) -> list[list]:
    """The rows of `select`, each as the list of `columns` (expressions over its result
    columns), read in one step. For TEXT, INTEGER and NULL values, and BLOBs as `hex(x)`
    (`bytes.fromhex` them back; a NULL blob comes back as "", not None: test for NULL in
    SQL if it matters); a REAL would come back rounded to 15 digits. Mind the size: the
    whole result is one SQLite value and one Python string. In no promised order: sort
    them if it matters."""
    (packed,) = conn.execute(f"SELECT json_group_array(json_array({columns})) FROM ({select})", args).fetchone()
    return orjson.loads(packed)
