"""From ``pgoutput`` messages to the changes the SQLAlchemy capture writes, one committed transaction at a time.

Each table's ``Relation`` message says its columns (names, type OIDs, which are the key); the row changes that
follow are turned into :func:`~freshviews.core.events.encode_change` JSON with the entity (the table, qualified
by its schema unless it is ``public``), the primary key as text (composite keys joined with ``,``, as the
capture does), and the before and after values of the columns the views need (every column when no registry
says which). A transaction's changes are collected from ``Begin`` to ``Commit`` and handed on together, in
commit order, which is the order the slot streams them in.

What the log cannot say, and how that is kept safe:

- an update or delete of a table without ``REPLICA IDENTITY FULL`` carries no old values (only the key, when
  the key changed or for a delete): the change's ``before`` then holds the key columns alone, and a view mapping
  another column finds it missing, so every key of that view is recomputed (``Change.values`` is None);
- an unchanged TOASTed value is not repeated by the log: that column is left out of the side, with the same
  effect;
- a ``TRUNCATE`` names no rows: it becomes one change with the id :data:`~freshviews.core.events.ALL_ROWS`,
  which affects every key of every view of the table;
- DDL (a column added or dropped) arrives as a new ``Relation`` message, which replaces the mapping; a column the
  views need that the table no longer has is reported once, as a warning, and its changes affect every key of
  the views mapping it. A row change to a relation never described is a dead letter with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from freshviews.core.events import ALL_ROWS, MAX_COLUMNS, Operation, Row, encode_change
from freshviews.pglog import protocol
from freshviews.pglog.values import convert

logger = logging.getLogger(__name__)

#: The columns views need of an entity (``Registry.columns``); None: every column.
ColumnsOf = Callable[[str], frozenset[str]] | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A row change the source could not turn into a change, with the reason."""

    reason: str
    origin: str


@dataclass(slots=True)
class Transaction:
    """One committed transaction's changes, in the order it made them."""

    commit_lsn: int
    end_lsn: int
    committed_ms: int
    #: Encoded changes (wire JSON), ready for the change log.
    changes: list[str] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Mapping:
    entity: str
    relation: protocol.Relation
    #: Indexes of the columns a change carries, and of the key columns.
    kept: tuple[int, ...]
    key: tuple[int, ...]


def entity_of(namespace: str, name: str) -> str:
    """The entity of a table, as the capture names it: ``players``, or ``stats.players`` outside ``public``."""
    return name if namespace == "public" else f"{namespace}.{name}"


class Decoder:
    """Turns the slot's messages, fed in order, into complete :class:`Transaction` s.

    ``entities`` (None: all) are the tables whose changes are kept; ``columns`` says which columns of each a
    change carries (with the key); by default every column. ``primary_keys`` names each table's key columns: the
    log marks the replica identity instead, which is every column under REPLICA IDENTITY FULL.
    """

    def __init__(
        self,
        *,
        entities: frozenset[str] | None = None,
        columns: ColumnsOf = None,
        primary_keys: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self._entities = entities
        self._columns = columns
        self._primary_keys = primary_keys or {}
        self._relations: dict[int, _Mapping] = {}
        self._open: Transaction | None = None

    @property
    def in_transaction(self) -> bool:
        return self._open is not None

    def feed(self, payload: bytes) -> Transaction | None:
        """Take one message; the transaction it completed, if it was a ``Commit``."""
        message = protocol.parse(payload)
        if isinstance(message, protocol.Begin):
            self._open = Transaction(message.final_lsn, 0, protocol.epoch_ms(message.commit_us))
        elif isinstance(message, protocol.Commit):
            done, self._open = self._open, None
            if done is None:
                raise protocol.ProtocolError("commit without a begin")
            done.commit_lsn, done.end_lsn = message.commit_lsn, message.end_lsn
            done.committed_ms = protocol.epoch_ms(message.commit_us)
            return done
        elif isinstance(message, protocol.Relation):
            self._describe(message)
        elif isinstance(message, protocol.Skipped):
            pass
        else:
            if self._open is None:
                raise protocol.ProtocolError(f"{type(message).__name__} outside a transaction")
            self._change(self._open, message)
        return None

    def _describe(self, relation: protocol.Relation) -> None:
        entity = entity_of(relation.namespace, relation.name)
        names = [column.name for column in relation.columns]
        primary = self._primary_keys.get(entity)
        if primary and set(primary) <= set(names):
            key = tuple(names.index(name) for name in primary)
        else:
            key = tuple(i for i, column in enumerate(relation.columns) if column.key)
        wanted = None if self._columns is None else self._columns(entity)
        kept = tuple(i for i in range(len(names)) if wanted is None or i in key or names[i] in wanted)
        if wanted is not None and (gone := sorted(wanted - set(names))):
            logger.warning(
                "table %s has no column %s that views need: its changes now affect every key of those views",
                entity, ", ".join(gone),
            )  # fmt: skip
        if len(kept) > MAX_COLUMNS:
            logger.warning("table %s: only its first %d columns are carried by its changes", entity, MAX_COLUMNS)
            kept = tuple(sorted(set(key) | set(kept[: MAX_COLUMNS - len(key)])))
        self._relations[relation.id] = _Mapping(entity, relation, kept, key)

    def _change(self, tx: Transaction, message: protocol.Message) -> None:
        origin = f"pg:{protocol.lsn_text(tx.commit_lsn)}:{len(tx.changes) + len(tx.dead)}"
        if isinstance(message, protocol.Truncate):
            for relation_id in message.relation_ids:
                mapping = self._relations.get(relation_id)
                if mapping is not None and self._watched(mapping.entity):
                    tx.changes.append(self._encode(tx, mapping.entity, ALL_ROWS, Operation.DELETE, None, None, origin))
            return
        assert isinstance(message, protocol.Insert | protocol.Update | protocol.Delete)
        mapping = self._relations.get(message.relation_id)
        if mapping is None:
            tx.dead.append(DeadLetter(f"a row change to relation {message.relation_id}, never described", origin))
            return
        if not self._watched(mapping.entity):
            return
        if isinstance(message, protocol.Insert):
            op, before, after = Operation.CREATE, None, self._row(mapping, message.new)
        elif isinstance(message, protocol.Update):
            op, after = Operation.UPDATE, self._row(mapping, message.new)
            # Without an old tuple the key did not change: the old row's key is the new one's, and nothing else
            # of the old row is known.
            before = self._row(mapping, message.old) if message.old is not None else self._key_of(mapping, after)
        else:
            op, before, after = Operation.DELETE, self._row(mapping, message.old), None
        identity_row = after if after is not None else before
        assert identity_row is not None
        names = [mapping.relation.columns[i].name for i in mapping.key]
        if not names or any(identity_row.get(name) is None for name in names):
            tx.dead.append(DeadLetter(f"{mapping.entity}: a row change without its primary key (no key?)", origin))
            return
        identity = ",".join(str(identity_row[name]) for name in names)
        tx.changes.append(self._encode(tx, mapping.entity, identity, op, before, after, origin))

    def _watched(self, entity: str) -> bool:
        return self._entities is None or entity in self._entities

    @staticmethod
    def _row(mapping: _Mapping, values: protocol.Values) -> Row:
        row: Row = {}
        columns = mapping.relation.columns
        for i in mapping.kept:
            if i >= len(values):
                break  # a column added after this row was written: not in its tuple
            raw = values[i]
            if raw is protocol.UNCHANGED:
                continue
            column = columns[i]
            row[column.name] = None if raw is None else convert(column.type_oid, raw)  # type: ignore[arg-type]
        return row

    @staticmethod
    def _key_of(mapping: _Mapping, row: Row) -> Row:
        names = [mapping.relation.columns[i].name for i in mapping.key]
        return {name: row[name] for name in names if name in row}

    @staticmethod
    def _encode(
        tx: Transaction, entity: str, identity: str, op: Operation, before: Row | None, after: Row | None, origin: str
    ) -> str:
        return encode_change(
            entity=entity, id=identity, op=op, before=before, after=after, committed_ms=tx.committed_ms, origin=origin
        )
