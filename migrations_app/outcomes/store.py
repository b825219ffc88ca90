"""How ingest writes: one statement per batch and table, whatever the batch size.

On PostgreSQL a batch's rows travel as one JSON parameter that the statement unpacks with
typed casts (the fast path); elsewhere (SQLite, the embedded mode) as bound values. Inserts
say which rows were new (``ON CONFLICT DO NOTHING RETURNING``), and every write goes in key
order, so that concurrent batches wait for each other instead of deadlocking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
import psycopg
from django.db import connection

# PostgreSQL gets a batch's rows as one JSON parameter (an array of row arrays) that the
# statement unpacks with typed casts: one short statement whatever the batch size, serialised
# by orjson. The portable form (one placeholder per value) spends more time building and
# adapting the query than the database spends storing the rows (bench/bench_ingest.py).
# Numbers survive exactly (shortest repr in, float8in out); datetimes go as RFC 3339 with
# microseconds and offset.
# Tests switch this off to run the portable path on PostgreSQL too; SQLite (the embedded
# mode) always takes it.
FAST_PATH = True


def fast_path() -> bool:
    return FAST_PATH and connection.vendor == "postgresql"


def pg_cursor() -> Any:
    """A psycopg cursor on Django's connection, inside its transaction, binding parameters on
    the server: the batch's JSON travels as a parameter instead of being escaped into the SQL
    text (Django's cursors bind on the client), and psycopg prepares a statement used often."""
    connection.ensure_connection()
    # Django opens its connections with ClientCursor as the factory: ask for a plain one.
    return psycopg.Cursor(connection.connection)


def json_rows(pg_types: Sequence[str]) -> str:
    """A SELECT of typed columns from the JSON parameter made by :func:`json_param`."""
    columns = ", ".join(
        f"(r->{i})::{t}" if t == "jsonb" else f"(r->>{i})::{t}" for i, t in enumerate(pg_types)
    )
    return f"SELECT {columns} FROM jsonb_array_elements(%s::jsonb) AS r"


def json_param(rows: Any) -> str:
    return orjson.dumps(rows).decode()


def insert_returning(
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    key: str,
    pg_types: Sequence[str],
) -> list[Any]:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING key``: the keys it stored. (PostgreSQL
    and SQLite >= 3.35 both speak it; the ORM's bulk_create cannot say which rows were new.)

    Rows go in key order (the key is the first column): two batches sharing events then wait
    for each other in the same order instead of deadlocking."""
    qn = connection.ops.quote_name
    rows = sorted(rows, key=lambda row: row[0])
    if fast_path():
        with pg_cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {qn(table)} ({', '.join(qn(c) for c in columns)}) "
                f"{json_rows(pg_types)} "
                f"ON CONFLICT ({qn(key)}) DO NOTHING RETURNING {qn(key)}",
                [json_param(rows)],
            )
            return [r[0] for r in cursor.fetchall()]
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    stored: list[Any] = []
    # Stay well under SQLite's and PostgreSQL's bound-parameter limits.
    chunk = max(1, 30_000 // len(columns))
    with connection.cursor() as cursor:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            cursor.execute(
                f"INSERT INTO {qn(table)} ({', '.join(qn(c) for c in columns)}) "
                f"VALUES {', '.join([one] * len(part))} "
                f"ON CONFLICT ({qn(key)}) DO NOTHING RETURNING {qn(key)}",
                [value for row in part for value in row],
            )
            stored.extend(r[0] for r in cursor.fetchall())
    return stored


def upsert_adding(
    table: str,
    key_columns: Sequence[str],
    value_columns: Sequence[str],
    pg_types: Sequence[str],
    changes: Mapping[tuple[Any, ...], Sequence[Any]],
) -> list[tuple[Any, ...]]:
    """Add each change (``key -> values``) to its row's ``value_columns``, creating the rows
    that are missing: ``INSERT ... ON CONFLICT DO UPDATE SET c = c + EXCLUDED.c RETURNING``
    every column; a ``jsonb`` column's objects of sums are added key by key
    (``turnout_add_sums``, outcomes/unit_rows.py). Returns the rows as they are after. Rows
    are written in key order, so concurrent batches lock in the same order; one statement on
    PostgreSQL, chunks of 2000 rows elsewhere."""
    if not changes:
        return []
    qn = connection.ops.quote_name
    name = qn(table)
    columns = [*key_columns, *value_columns]
    kinds = dict(zip(columns, pg_types, strict=True))
    updates = ", ".join(
        f"{qn(c)} = turnout_add_sums({name}.{qn(c)}, EXCLUDED.{qn(c)})"
        if kinds[c] == "jsonb"
        else f"{qn(c)} = {name}.{qn(c)} + EXCLUDED.{qn(c)}"
        for c in value_columns
    )
    # The portable path binds a jsonb column's value as JSON text.
    as_json = {i for i, c in enumerate(columns) if kinds[c] == "jsonb"}
    statement = (
        f"INSERT INTO {name} ({', '.join(qn(c) for c in columns)}) {{source}} "
        f"ON CONFLICT ({', '.join(qn(c) for c in key_columns)}) DO UPDATE SET {updates} "
        f"RETURNING {', '.join(qn(c) for c in columns)}"
    )
    keys = sorted(changes)
    fast = fast_path()
    chunk = len(keys) if fast else 2000
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    found: list[tuple[Any, ...]] = []
    with pg_cursor() if fast else connection.cursor() as cursor:
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            rows = [(*key, *changes[key]) for key in part]
            if fast:
                source, params = json_rows(pg_types), [json_param(rows)]
            else:
                source = f"VALUES {', '.join([one] * len(part))}"
                params = [
                    json_param(value) if i in as_json else value
                    for row in rows
                    for i, value in enumerate(row)
                ]
            cursor.execute(statement.format(source=source), params)
            found.extend(tuple(row) for row in cursor.fetchall())
    return found


def db_datetime(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


class _Row:
    """A locked aggregate row as the fast path reads it (id and data); the merge then sets
    the columns to write, like on a model instance."""

    def __init__(self, pk: int, data: Any) -> None:
        self.pk = pk
        self.data = orjson.loads(data) if isinstance(data, str) else data


def lock_or_create(
    model: Any,
    key_fields: Sequence[str],
    key_types: Sequence[str],
    keys: Sequence[tuple[Any, ...]],
    blank: Mapping[str, str],
) -> dict[tuple[Any, ...], Any]:
    """Each key's row, created blank where missing, and locked. The missing rows are inserted
    (``ON CONFLICT DO NOTHING``: one another batch is inserting is waited for, then left as
    it is), then every row is read ``FOR UPDATE`` in the order of ``keys``, so concurrent
    batches lock in the same order (both statements go in that order). Taking the lock
    writes no row version; the caller's update writes the only one."""
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    names = ", ".join(qn(n) for n in (*key_fields, *blank))
    keys_sql = ", ".join(qn(f) for f in key_fields)
    select = json_rows(key_types).replace(" FROM ", f", {', '.join(blank.values())} FROM ", 1)
    match = " AND ".join(
        f"t.{qn(f)} = (r.v->>{i})::{t}"
        for i, (f, t) in enumerate(zip(key_fields, key_types, strict=True))
    )
    param = json_param([list(k) for k in keys])
    with pg_cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({names}) {select} ON CONFLICT ({keys_sql}) DO NOTHING",
            [param],
        )
        cursor.execute(
            f"SELECT t.id, {', '.join(f't.{qn(f)}' for f in key_fields)}, t.data "
            f"FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(v, i) "
            f"JOIN {table} AS t ON {match} ORDER BY r.i FOR UPDATE OF t",
            [param],
        )
        return {tuple(found): _Row(pk, data) for pk, *found, data in cursor.fetchall()}


def update_rows(
    model: Any, rows: Sequence[Any], fields: Sequence[str], pg_types: Sequence[str]
) -> None:
    """Write ``fields`` of rows already locked and changed in memory: on PostgreSQL one
    ``UPDATE ... FROM`` the JSON parameter, elsewhere a save per row."""
    if not rows:
        return
    if not fast_path():
        for row in rows:
            row.save(update_fields=fields)
        return
    qn = connection.ops.quote_name
    names = ", ".join(qn(f) for f in fields)
    sets = ", ".join(f"{qn(f)} = v.{qn(f)}" for f in fields)
    values = [
        [row.pk, *(getattr(row, f) for f in fields)] for row in sorted(rows, key=lambda r: r.pk)
    ]
    with pg_cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(model._meta.db_table)} AS t SET {sets} "
            f"FROM ({json_rows(('bigint', *pg_types))}) AS v(id, {names}) WHERE t.id = v.id",
            [json_param(values)],
        )
