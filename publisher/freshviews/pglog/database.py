"""The publication and the replication slot, over an ordinary connection: created when missing, dropped on demand.

psycopg2 is synchronous; the async side calls these through ``asyncio.to_thread``. Names come from validated
settings and go into SQL only as identifiers (:mod:`psycopg2.sql`) or parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg2
from psycopg2 import sql

from freshviews.core.settings import ConfigError

logger = logging.getLogger(__name__)

PLUGIN = "pgoutput"


class TableMissing(LookupError):
    """A watched table does not exist (yet): the app that creates it may not have started. Retried."""


def _table(name: str) -> sql.Composed:
    schema, _, table = name.rpartition(".")
    return sql.SQL(".").join([sql.Identifier(schema or "public"), sql.Identifier(table)])


@contextmanager
def connect(url: str) -> Iterator[psycopg2.extensions.connection]:
    """An ordinary autocommit connection, closed on exit (psycopg2's own ``with`` only ends a transaction)."""
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        conn.autocommit = True
        yield conn
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class Prepared:
    created_slot: bool
    created_publication: bool
    #: Watched tables whose updates and deletes carry no old values (no REPLICA IDENTITY FULL).
    without_old_values: tuple[str, ...]
    #: Each watched table's primary key columns (the log marks the replica identity, every column when FULL).
    primary_keys: dict[str, tuple[str, ...]]


def ensure(url: str, *, slot: str, publication: str, tables: Sequence[str]) -> Prepared:
    """Create the publication over ``tables`` (or set its tables) and the slot, where missing.

    Raises :class:`ConfigError` for what waiting will not fix: ``wal_level`` not ``logical``, no tables, a table
    without a replica identity (its updates would fail once it is published); :class:`TableMissing` for a table
    not created yet.
    """
    if not tables:
        raise ConfigError("FRESHVIEWS_PGLOG_TABLES: no tables to watch (and no views naming entities)")
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SHOW wal_level")
        (level,) = cur.fetchone() or ("",)
        if level != "logical":
            raise ConfigError(f"FRESHVIEWS_PGLOG_URL: the database has wal_level={level}; set wal_level=logical")
        identities = _identities(cur, tables)
        primary_keys = {table: _primary_key(cur, table) for table in tables}
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
        created_publication = cur.fetchone() is None
        listed = sql.SQL(", ").join(_table(t) for t in tables)
        if created_publication:
            cur.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(publication), listed))
        else:
            cur.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(publication), listed))
        cur.execute(
            "SELECT plugin, database = current_database() FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )
        found = cur.fetchone()
        if found is not None and (found[0] != PLUGIN or not found[1]):
            raise ConfigError(
                f"FRESHVIEWS_PGLOG_SLOT: slot {slot!r} exists with plugin {found[0]} or on another database"
            )
        created_slot = found is None
        if created_slot:
            try:
                cur.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, PLUGIN))
            except psycopg2.errors.DuplicateObject:
                created_slot = False  # another source created it meanwhile
    partial = tuple(t for t in tables if identities[t] != "f")
    return Prepared(created_slot, created_publication, partial, primary_keys)


def _primary_key(cur: psycopg2.extensions.cursor, table: str) -> tuple[str, ...]:
    schema, _, name = table.rpartition(".")
    cur.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) ON true"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
        " WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary ORDER BY k.position",
        (schema or "public", name),
    )
    return tuple(row[0] for row in cur.fetchall())


def _identities(cur: psycopg2.extensions.cursor, tables: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for table in tables:
        schema, _, name = table.rpartition(".")
        cur.execute(
            "SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND"
            " (i.indisprimary OR i.indisreplident)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (schema or "public", name),
        )
        row = cur.fetchone()
        if row is None:
            raise TableMissing(f"no table {table!r} in the database (yet?)")
        identity, indexed = row
        if identity == "n" or (identity in "di" and not indexed):
            # Published without a replica identity, the table's UPDATEs and DELETEs would start failing.
            raise ConfigError(
                f"FRESHVIEWS_PGLOG_TABLES: table {table!r} has no primary key or replica identity; give it one, or "
                f"ALTER TABLE {table} REPLICA IDENTITY FULL"
            )
        found[table] = identity
    return found


def drop(url: str, *, slot: str, publication: str) -> list[str]:
    """Drop the slot and the publication if they exist; what was dropped. A slot in use is a :class:`ConfigError`
    (stop its source first): dropping it under a running source would lose that source's position."""
    dropped: list[str] = []
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
        if row is not None:
            if row[0] is not None:
                raise ConfigError(f"slot {slot!r} is in use by the process {row[0]}: stop the log source first")
            cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            dropped.append(f"slot {slot}")
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
        if cur.fetchone() is not None:
            cur.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))
            dropped.append(f"publication {publication}")
    return dropped


@dataclass(frozen=True, slots=True)
class SlotLag:
    #: WAL the slot holds that the source has not confirmed, bytes.
    lag_bytes: int
    #: Whether a source is connected to the slot now.
    active: bool


def slot_lag(url: str, slot: str) -> SlotLag | None:
    """How far behind ``slot`` is (None: there is no such slot)."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, active"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        )
        row = cur.fetchone()
    return None if row is None else SlotLag(int(row[0] or 0), bool(row[1]))
