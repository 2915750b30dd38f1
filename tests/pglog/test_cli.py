"""``freshviews pglog``: its mistakes are one line and exit 2; ``--drop`` removes what a removed deployment left."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.pglog.test_processes import _env
from tests.support.pgcluster import Database
from tests.support.processes import REPO, python

pytestmark = pytest.mark.postgres


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python("-m", "freshviews", "pglog", *args), env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def _slots(db: Database) -> list[str]:
    return db.psql(f"SELECT slot_name FROM pg_replication_slots WHERE slot_name = '{db.slot}'").split()


def test_drop_removes_the_slot_and_the_publication(db: Database, redis_url: str) -> None:
    db.psql(
        f"CREATE PUBLICATION {db.slot} FOR TABLE items;"
        f"SELECT pg_create_logical_replication_slot('{db.slot}', 'pgoutput');"
    )
    assert _slots(db) == [db.slot]
    dropped = _run(_env(redis_url, db), "--drop")
    assert dropped.returncode == 0, dropped.stderr
    assert json.loads(dropped.stdout) == {"dropped": [f"slot {db.slot}", f"publication {db.slot}"]}
    assert _slots(db) == []
    assert db.psql(f"SELECT count(*) FROM pg_publication WHERE pubname = '{db.slot}'").strip() == "0"
    again = _run(_env(redis_url, db), "--drop")
    assert (again.returncode, json.loads(again.stdout)) == (0, {"dropped": []})


def test_mistakes_are_one_line_and_exit_2(db: Database, redis_url: str) -> None:
    env = _env(redis_url, db)
    db.psql("CREATE TABLE nokey (note text);")
    cases = {
        "has no primary key or replica identity": (env, ["--tables", "nokey"]),
        "FRESHVIEWS_PGLOG_URL: set it": ({k: v for k, v in env.items() if k != "FRESHVIEWS_PGLOG_URL"}, []),
        "FRESHVIEWS_PGLOG_URL: must be a postgresql:// URL": ({**env, "FRESHVIEWS_PGLOG_URL": "mysql://x/y"}, []),
    }
    for expected, (case_env, args) in cases.items():
        done = _run(case_env, *args)
        assert done.returncode == 2, (expected, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("freshviews: error: ")]
        assert len(errors) == 1, done.stderr
        assert expected in errors[0], errors
    # Refused before it published anything: the table's own UPDATEs keep working.
    db.psql("INSERT INTO nokey VALUES ('a'); UPDATE nokey SET note = 'b';")
    assert _slots(db) == []
