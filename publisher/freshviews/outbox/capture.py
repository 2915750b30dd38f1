"""Capture from SQLAlchemy 2: every ORM write to an entity the views depend on becomes an outbox row, in the
same transaction as the write.

One call, :func:`track`, on the sessionmaker (sync or async) the application writes through. From then on:

- every ORM insert, update and delete flushed by its sessions (``session.add``, attribute changes,
  ``session.delete``, relationship cascades the ORM carries out) records one change per row with the values of the
  columns the views need (:meth:`freshviews.core.Registry.columns`) before and after;
- ``update()`` and ``delete()`` statements run through its sessions record one change per row they touch: the
  rows are read (primary key and those columns) before the statement, and an update's rows again after it;
- after a commit that recorded changes, ``on_commit`` receives the rows it wrote (a relay's
  :meth:`~freshviews.outbox.Relay.hand`, which sends them from memory at once); without ``on_commit``, on
  PostgreSQL the transaction sends ``NOTIFY freshviews_outbox``, which wakes the relays in other processes.

What it cannot see: SQL sent as text (``session.execute(text(...))``), Core statements on a connection, bulk
inserts without primary keys, cascades the database performs itself (``ON DELETE CASCADE``, ``SET NULL``) and
writes from other programs. Those reach the cache through the sweep, or the PostgreSQL log source.

A column whose old value the ORM does not know (never loaded before it was changed) is left out of ``before``:
the subscriber then recomputes every key of the views that map that column, rather than guess.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Table, event, insert, inspect, select, text, tuple_
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    ORMExecuteState,
    Session,
    SessionTransaction,
    UOWTransaction,
    sessionmaker,
)

from freshviews.core.events import Operation, encode_change
from freshviews.core.views import Registry
from freshviews.outbox.table import OutboxRow, outbox_table

logger = logging.getLogger(__name__)

#: The channel a PostgreSQL transaction that captured changes notifies at commit.
NOTIFY_CHANNEL = "freshviews_outbox"
_PENDING = "freshviews.captured"
_NOTIFIED = "freshviews.notified"

CHANGES_CAPTURED = Counter(
    "freshviews_changes_captured_total", "Changes written to the outbox in their write's transaction", ["entity"]
)

Row = dict[str, Any]


def plain(value: Any) -> Any:
    """A column value as JSON carries it: dates and times in ISO 8601, decimals, UUIDs and the rest as text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    return str(value)


def _has_default(column: Any) -> bool:
    return column.default is not None or column.server_default is not None


class Capture:
    """The tracking :func:`track` installed; :meth:`remove` takes it off again."""

    def __init__(
        self, registry: Registry[Any], table: Table, *, on_commit: Callable[[list[OutboxRow]], None] | None = None
    ) -> None:
        self.registry = registry
        self.table = table
        self.on_commit = on_commit
        self._targets: list[Any] = []
        self._restore: Callable[[], None] | None = None
        self._columns: dict[str, tuple[str, ...]] = {}

    # -- installing --------------------------------------------------------------------------------------

    def attach(self, target: Any, *, restore: Callable[[], None] | None = None) -> None:
        """Listen on ``target`` (a sessionmaker or a Session class); ``restore`` undoes what attaching changed."""
        for name, handler in self._handlers():
            event.listen(target, name, handler)
        self._targets.append(target)
        self._restore = restore

    def remove(self) -> None:
        for target in self._targets:
            for name, handler in self._handlers():
                event.remove(target, name, handler)
        self._targets.clear()
        if self._restore is not None:
            self._restore()
            self._restore = None

    def _handlers(self) -> list[tuple[str, Callable[..., Any]]]:
        return [
            ("after_flush", self._after_flush),
            ("do_orm_execute", self._do_orm_execute),
            ("after_commit", self._after_commit),
            ("after_soft_rollback", self._after_rollback),
            ("after_transaction_end", self._after_transaction_end),
        ]

    # -- what to record ----------------------------------------------------------------------------------

    def entity_of(self, mapper: Mapper[Any]) -> str | None:
        table = mapper.local_table
        name = getattr(table, "name", None)
        if name is None:
            return None
        schema = getattr(table, "schema", None)
        entity = f"{schema}.{name}" if schema else str(name)
        return entity if entity in self.registry.entities else None

    def columns(self, mapper: Mapper[Any], entity: str) -> tuple[str, ...]:
        """The database column names recorded for ``entity``: its primary key and what the views need."""
        found = self._columns.get(entity)
        if found is None:
            table = mapper.local_table
            wanted = {column.name for column in mapper.primary_key} | set(self.registry.columns(entity))
            found = tuple(name for name in table.columns.keys() if name in wanted)  # noqa: SIM118
            self._columns[entity] = found
        return found

    # -- the unit of work --------------------------------------------------------------------------------

    def _after_flush(self, session: Session, _context: UOWTransaction) -> None:
        now = int(time.time() * 1000)
        rows: list[Row] = []
        for obj in [*session.new, *session.dirty, *session.deleted]:
            state: InstanceState[Any] = inspect(obj)
            entity = self.entity_of(state.mapper)
            if entity is None:
                continue
            columns = self.columns(state.mapper, entity)
            if obj in session.new:
                op, before, after = Operation.CREATE, None, self._values(state, columns, old=False, created=True)
            elif obj in session.deleted:
                op, before, after = Operation.DELETE, self._values(state, columns, old=True), None
            else:
                if not session.is_modified(obj, include_collections=False):
                    continue  # touched, but no column changed
                # A change to any column is a change (a view may show a column that names none of its keys).
                before, after = self._values(state, columns, old=True), self._values(state, columns, old=False)
                op = Operation.UPDATE
            key = state.mapper.primary_key_from_instance(obj)
            rows.append(self._row(entity, key, op, before, after, now))
        self._write(session, rows)

    def _values(self, state: InstanceState[Any], columns: Sequence[str], *, old: bool, created: bool = False) -> Row:
        values: Row = {}
        mapper = state.mapper
        for name in columns:
            key = mapper.get_property_by_column(mapper.local_table.c[name]).key
            history = state.attrs[key].history
            if not old:
                if key in state.dict:
                    values[name] = plain(state.dict[key])
                elif created and not _has_default(mapper.local_table.c[name]):
                    # Never set and nothing to fill it in: the database stored NULL.
                    values[name] = None
            elif history.deleted:
                values[name] = plain(history.deleted[0])
            elif not history.added and key in state.dict:
                values[name] = plain(state.dict[key])
            # else: changed without its old value loaded: left out, so nobody relies on a guess
        return values

    # -- update() and delete() statements ----------------------------------------------------------------

    def _do_orm_execute(self, execute: ORMExecuteState) -> Result[Any] | None:
        if not (execute.is_update or execute.is_delete) or execute.bind_mapper is None:
            return None
        mapper = execute.bind_mapper
        entity = self.entity_of(mapper)
        if entity is None:
            return None
        table = mapper.local_table
        columns = self.columns(mapper, entity)
        key_names = [column.name for column in mapper.primary_key]
        key = tuple_(*(table.c[name] for name in key_names))
        read = select(*(table.c[name] for name in columns))
        if execute.is_executemany:
            # An UPDATE by primary key: each parameter set names its row.
            attrs = [mapper.get_property_by_column(column).key for column in mapper.primary_key]
            parameters: list[dict[str, Any]] = list(execute.parameters)  # type: ignore[arg-type]
            found = execute.session.execute(read.where(key.in_([tuple(p[a] for a in attrs) for p in parameters])))
        else:
            where = execute.statement.whereclause  # type: ignore[attr-defined]
            found = execute.session.execute(read if where is None else read.where(where), execute.parameters)
        before = self._by_key(found, columns, key_names)
        result = execute.invoke_statement()
        after: dict[tuple[Any, ...], Row] = {}
        if execute.is_update and before:
            after = self._by_key(execute.session.execute(read.where(key.in_(list(before)))), columns, key_names)
        now = int(time.time() * 1000)
        op = Operation.UPDATE if execute.is_update else Operation.DELETE
        # Every row the statement matched: it may have changed a column no declaration maps but a view shows.
        rows = [
            self._row(entity, identity, op, old, after.get(identity), now)
            for identity, old in before.items()
            if op is Operation.DELETE or identity in after
        ]
        self._write(execute.session, rows)
        return result

    @staticmethod
    def _by_key(result: Result[Any], columns: Sequence[str], key_names: Sequence[str]) -> dict[tuple[Any, ...], Row]:
        out: dict[tuple[Any, ...], Row] = {}
        for row in result.mappings():
            out[tuple(row[name] for name in key_names)] = {name: plain(row[name]) for name in columns}
        return out

    # -- writing and waking ------------------------------------------------------------------------------

    def _row(
        self, entity: str, key: Iterable[Any], op: Operation, before: Row | None, after: Row | None, now: int
    ) -> Row:
        identity = ",".join(str(plain(part)) for part in key)
        change = encode_change(entity=entity, id=identity, op=op, before=before, after=after, committed_ms=now)
        return {"change": change, "created_ms": now, "entity": entity}

    def _write(self, session: Session, rows: list[Row]) -> None:
        if not rows:
            return
        connection = session.connection()
        values = [{"change": r["change"], "created_ms": r["created_ms"]} for r in rows]
        if self.on_commit is not None:
            # Each row is kept with the savepoint it was written in (None: the transaction itself), so that a
            # savepoint rolled back takes its rows out of what the commit hands over.
            savepoint = session.get_nested_transaction()
            pending: list[_Pending] = session.info.setdefault(_PENDING, [])
            if connection.dialect.insert_executemany_returning_sort_by_parameter_order:
                # The ids come back in the order of the rows (one statement: SQLAlchemy's insertmanyvalues), so
                # the relay of this process can send them from memory after the commit, without reading the table.
                returning = insert(self.table).returning(self.table.c.id, sort_by_parameter_order=True)
                ids: Sequence[int | None] = connection.execute(returning, values).scalars().all()
            else:  # no INSERT ... RETURNING here: the relay passes over the table instead
                connection.execute(insert(self.table), values)
                ids = [None] * len(rows)
            pending.extend((savepoint, row_id, r["change"]) for row_id, r in zip(ids, rows, strict=True))
        else:
            connection.execute(insert(self.table), values)
            if connection.dialect.name == "postgresql" and not session.info.get(_NOTIFIED):
                # No relay here: wake those elsewhere. Delivered at commit, and only if the transaction commits.
                connection.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
                session.info[_NOTIFIED] = True
        for row in rows:
            CHANGES_CAPTURED.labels(row["entity"]).inc()

    def _after_commit(self, session: Session) -> None:
        if session.get_nested_transaction() is not None:
            return  # a savepoint released: its rows are the enclosing transaction's now, not committed yet
        captured: list[_Pending] | None = session.info.pop(_PENDING, None)
        session.info.pop(_NOTIFIED, None)
        if captured and self.on_commit is not None:
            rows = [(row_id, change) for _, row_id, change in captured if row_id is not None]
            # Rows without their ids (no RETURNING): an empty hand-over, which has the relay pass over the table.
            self.on_commit(rows if len(rows) == len(captured) else [])

    def _after_rollback(self, session: Session, previous: SessionTransaction) -> None:
        if previous.nested:
            # The savepoint's rows (and those of savepoints inside it) are gone; a NOTIFY in it is discarded too.
            pending: list[_Pending] = session.info.get(_PENDING, [])
            pending[:] = [p for p in pending if not _within(p[0], previous)]
            session.info.pop(_NOTIFIED, None)
            return
        session.info.pop(_PENDING, None)
        session.info.pop(_NOTIFIED, None)

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:
            # The transaction is over without a commit having taken its rows (closed, or expunged): they are not
            # committed, so nothing is handed over; the next transaction starts clean.
            session.info.pop(_PENDING, None)
            session.info.pop(_NOTIFIED, None)


#: A row written and not committed yet: the savepoint it was written in, its id (None without RETURNING), the change.
_Pending = tuple["SessionTransaction | None", "int | None", str]


def _within(savepoint: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    """Whether ``savepoint`` is ``ancestor`` or inside it."""
    while savepoint is not None:
        if savepoint is ancestor:
            return True
        savepoint = savepoint.parent
    return False


def track(
    sessions: sessionmaker[Any] | async_sessionmaker[Any],
    registry: Registry[Any],
    *,
    table: Table | None = None,
    on_commit: Callable[[list[OutboxRow]], None] | None = None,
) -> Capture:
    """Capture every ORM write of ``sessions``'s sessions to the entities ``registry``'s views depend on.

    ``table`` is the outbox table (:func:`~freshviews.outbox.table.outbox_table`); ``on_commit`` receives the
    rows of every commit that captured changes (a relay's ``hand``); without it, on PostgreSQL, each such
    transaction notifies ``freshviews_outbox``. Returns the :class:`Capture`, whose ``remove()``
    stops it.
    """
    capture = Capture(registry, table if table is not None else outbox_table(), on_commit=on_commit)
    if isinstance(sessions, async_sessionmaker):
        # Events of an AsyncSession are those of its sync session: give this factory a class of its own, so
        # that sessions made elsewhere are not tracked.
        original = sessions.kw.get("sync_session_class", Session)
        tracked = type("TrackedSession", (original,), {})
        sessions.configure(sync_session_class=tracked)

        def restore() -> None:
            sessions.configure(sync_session_class=original)

        capture.attach(tracked, restore=restore)
    else:
        capture.attach(sessions)
    return capture
