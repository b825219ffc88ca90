"""How ingest writes: one statement per batch and table, whatever the batch size.

On PostgreSQL a batch's rows travel as one JSON parameter that the statement unpacks with
typed casts (the fast path); elsewhere (SQLite, the embedded mode) as bound values. Inserts
say which rows were new (``ON CONFLICT DO NOTHING RETURNING``), and every write goes in key
order, so that concurrent batches wait for each other instead of deadlocking.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

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
    sums: SumsLayout | None = None,
) -> list[tuple[Any, ...]]:
    """Add each change (``key -> values``) to its row's ``value_columns``, creating the rows
    that are missing: ``INSERT ... ON CONFLICT DO UPDATE SET c = c + EXCLUDED.c RETURNING``
    every column. A ``jsonb`` column (at most one) holds an object of sums, added key by key
    (:func:`add_sums`); ``sums`` is the layout of the changes' objects (:func:`sums_layout`),
    and the column comes back as an array of those sums' numbers, name after name, each as
    wide as the widest, 0 where the row has none (:func:`loads` reads SQLite's; no JSON object
    per row to parse).
    Returns the rows as they are after. Rows are written in key order, so concurrent
    batches lock in the same order; one statement on PostgreSQL, chunks of 2000 rows
    elsewhere."""
    if not changes:
        return []
    qn = connection.ops.quote_name
    name = qn(table)
    columns = [*key_columns, *value_columns]
    kinds = dict(zip(columns, pg_types, strict=True))
    # The portable path binds a jsonb column's value as JSON text.
    as_json = {i for i, c in enumerate(columns) if kinds[c] == "jsonb"}
    if as_json and not (sums and sums.names):
        raise ValueError("a jsonb column of sums needs the changes' names (sums_layout)")
    layout = sums or SumsLayout((), 0, 0)
    updates = ", ".join(
        _sums_added(name, qn(c), layout)
        if i in as_json
        else f"{qn(c)} = {name}.{qn(c)} + EXCLUDED.{qn(c)}"
        for i, c in enumerate(columns)
        if i >= len(key_columns)
    )
    returned = ", ".join(
        _sums_returned(qn(c), layout) if i in as_json else qn(c) for i, c in enumerate(columns)
    )
    statement = (
        f"INSERT INTO {name} ({', '.join(qn(c) for c in columns)}) {{source}} "
        f"ON CONFLICT ({', '.join(qn(c) for c in key_columns)}) DO UPDATE SET {updates} "
        f"RETURNING {returned}"
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
            found.extend(cursor.fetchall())  # tuples, on both paths
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


# --- objects of sums ---------------------------------------------------------------------

# A sum's name goes into the statement's text (PostgreSQL's jsonb_build_object takes keys as
# values, but a parameter per key and row would cost more than the merge): only names of this
# shape, which every declared metric and answer check has (turnout.contract), ever do.
_SUM_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# jsonb_build_object takes at most 100 arguments: 50 names, in groups of 40.
_NAMES_PER_OBJECT = 40


def add_sums(stored: Mapping[str, Sequence[float]], delta: Mapping[str, Sequence[float]]) -> dict:
    """Objects of sums (``{name: [numbers]}``) added: a name of ``delta`` absent from
    ``stored`` comes as it is, a name of both gets the elementwise sum (the shorter padded
    with zeros). What the upsert's SQL does, in Python: SQLite calls it as
    ``turnout_add_sums`` (:func:`connect_sqlite`)."""
    out = {name: list(sums) for name, sums in stored.items()}
    for name, more in delta.items():
        had = out.get(name)
        if had is None:
            out[name] = list(more)
            continue
        width = max(len(had), len(more))
        had, more = [*had, 0.0][:width], [*more, 0.0][:width]
        out[name] = [float(a) + float(b) for a, b in zip(had, more, strict=True)]
    return out


def connect_sqlite(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created``: give an SQLite connection ``turnout_add_sums`` over JSON text."""
    if connection.vendor == "sqlite":
        connection.connection.create_function(
            "turnout_add_sums",
            2,
            lambda stored, delta: orjson.dumps(
                add_sums(loads(stored) or {}, loads(delta) or {})
            ).decode(),
            deterministic=True,
        )


def loads(value: Any) -> Any:
    """A jsonb value as a query returned it: psycopg hands Django's connections jsonb as text
    (Django parses JSONField itself), SQLite stores it as text."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value  # a tuple: faster


class SumsLayout(NamedTuple):
    """The names of a batch's objects of sums (sorted), and their narrowest and widest sums."""

    names: Sequence[str]
    narrowest: int
    widest: int


def sums_layout(deltas: Iterable[Mapping[str, Sequence[float]]]) -> SumsLayout:
    """The layout of some objects of sums (a batch's changes). Their names go into the
    statement's text: only names of :data:`_SUM_NAME`'s shape, else ValueError."""
    names: set[str] = set()
    widths: set[int] = set()
    for sums in deltas:
        names.update(sums)
        widths.update(map(len, sums.values()))
    bad = sorted(name for name in names if not _SUM_NAME.fullmatch(name))
    if bad:
        raise ValueError(f"not a name of sums: {bad[0]!r}")
    return SumsLayout(sorted(names), min(widths, default=0), max(widths, default=0))


def _sums_added(table: str, column: str, layout: SumsLayout) -> str:
    """The SET clause adding the batch's objects of sums (laid out as ``layout``) to the
    stored ones in ``column`` (:func:`add_sums`); both names quoted.

    On PostgreSQL, an expression of the batch's names: for each, when the row's delta has it,
    the elementwise sum as a jsonb array, merged over the stored object (a plpgsql function
    looping over each row's keys measured twice the CPU). Widths: as wide as the widest delta
    of the batch (a unit's sums under one name always have one width: [n, sum] for an arm,
    [n, sum, control's sum] for a shadow stage's pairs)."""
    stored, delta = f"{table}.{column}", f"EXCLUDED.{column}"
    if connection.vendor != "postgresql":
        return f"{column} = turnout_add_sums({stored}, {delta})"
    names, narrowest, widest = layout

    def added(name: str) -> str:
        terms = ", ".join(
            f"coalesce(({stored}->'{name}'->>{i})::float8, 0) + "
            + (f"({delta}->'{name}'->>{i})::float8" if i < narrowest
               else f"coalesce(({delta}->'{name}'->>{i})::float8, 0)")
            for i in range(widest)
        )  # fmt: skip
        return f"'{name}', CASE WHEN {delta} ? '{name}' THEN jsonb_build_array({terms}) END"

    objects = " || ".join(
        f"jsonb_build_object({', '.join(added(n) for n in names[i : i + _NAMES_PER_OBJECT])})"
        for i in range(0, len(names), _NAMES_PER_OBJECT)
    )
    return f"{column} = {stored} || jsonb_strip_nulls({objects})"


def _sums_returned(column: str, layout: SumsLayout) -> str:
    """The RETURNING item of the laid-out sums' numbers as a row stores them after the upsert:
    per name, ``widest`` numbers, 0 where the row has none, in one array (a column per number
    would meet PostgreSQL's 1,664 result columns at ~820 names). float8 from the jsonb
    number's text: the same double PostgreSQL stored. SQLite returns a JSON array (text)."""
    names, _, widest = layout
    if connection.vendor == "postgresql":
        number, array = "coalesce(({column}->'{name}'->>{i})::float8, 0)", "ARRAY[{}]::float8[]"
    else:
        number, array = "coalesce(json_extract({column}, '$.{name}[{i}]'), 0)", "json_array({})"
    return array.format(
        ", ".join(
            number.format(column=column, name=name, i=i) for name in names for i in range(widest)
        )
    )
