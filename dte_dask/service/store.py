"""The job store: one SQLite table of jobs and their states (stdlib ``sqlite3``).

States::

    queued -> running -> succeeded | failed | cancelled
    queued -> cancelled                  (DELETE before it starts)
    running -> cancelling -> cancelled   (DELETE while it runs; its futures are released at once)
    running -> interrupted               (the service stopped, or died, while it ran)

At startup :meth:`JobStore.recover` marks the jobs a previous process left running as
``interrupted`` (those being cancelled as ``cancelled``) and returns the queued ones, which are queued again in submission order (they
never started, so running them now is exactly what was asked).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STATES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running", "cancelling")
FINAL = ("succeeded", "failed", "cancelled", "interrupted")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    state        TEXT NOT NULL,
    spec         TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    error        TEXT,
    results_dir  TEXT,
    warnings     TEXT NOT NULL DEFAULT '[]',
    summary      TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_JSON_COLUMNS = ("spec", "warnings", "summary")


class JobStore:
    """Thread-safe access to the jobs table (one connection, one lock; WAL journal)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) > SCHEMA_VERSION:
                raise RuntimeError(f"job database {self.path} has schema version {row['value']}, "
                                   f"newer than this dte_dask ({SCHEMA_VERSION})")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ rows
    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        out = dict(row)
        for k in _JSON_COLUMNS:
            if out.get(k) is not None:
                out[k] = json.loads(out[k])
        return out

    def add(self, job_id: str, name: str, spec: dict[str, Any], results_dir: str,
            warnings: Iterable[str] = ()) -> dict[str, Any]:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, name, state, spec, submitted_at, results_dir, warnings) "
                "VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                (job_id, name, json.dumps(spec), time.time(), results_dir, json.dumps(list(warnings))))
        row = self.get(job_id)
        assert row is not None
        return row

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._row(self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def list(self, state: str | None = None, limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Job summaries (no spec, summary or warnings), newest first, and how many there are in all."""
        where, args = ("WHERE state = ?", [state]) if state else ("", [])
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT id, name, state, submitted_at, started_at, finished_at, substr(error, 1, 500) AS error "
                f"FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return [dict(r) for r in rows], int(total)

    def delete(self, job_id: str, states: Iterable[str] = FINAL) -> bool:
        """Remove a job's row if it is in one of ``states``; whether it was removed."""
        froms = list(states)
        with self._lock:
            cur = self._db.execute(f"DELETE FROM jobs WHERE id = ? AND state IN ({', '.join('?' * len(froms))})",
                                   [job_id, *froms])
            return cur.rowcount == 1

    def finished_before(self, t: float, limit: int = 1000) -> list[tuple[str, str | None]]:
        """``(id, results_dir)`` of finished jobs that ended before ``t``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, results_dir FROM jobs WHERE state IN ({', '.join('?' * len(FINAL))}) "
                "AND finished_at IS NOT NULL AND finished_at < ? ORDER BY finished_at LIMIT ?",
                [*FINAL, t, limit]).fetchall()
        return [(r[0], r[1]) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, 0 if none)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        out = dict.fromkeys(STATES, 0)
        out.update({r[0]: int(r[1]) for r in rows})
        return out

    def transition(self, job_id: str, from_states: Iterable[str], to_state: str, **fields: Any) -> bool:
        """Set ``state = to_state`` (and ``fields``) only if the job is in one of ``from_states``.

        Returns whether the row changed: the one atomic step every state change goes through, so
        that a cancel and a job finishing at the same moment cannot both win.
        """
        assert to_state in STATES
        sets, args = ["state = ?"], [to_state]
        for k, v in fields.items():
            if k not in ("started_at", "finished_at", "error", "summary"):
                raise KeyError(k)
            sets.append(f"{k} = ?")
            args.append(json.dumps(v) if k in _JSON_COLUMNS and v is not None else v)
        froms = list(from_states)
        q = (f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? "
             f"AND state IN ({', '.join('?' * len(froms))})")
        with self._lock:
            cur = self._db.execute(q, [*args, job_id, *froms])
            return cur.rowcount == 1

    def recover(self) -> list[str]:
        """After a restart: running jobs -> ``interrupted``; the queued ids, oldest first."""
        now = time.time()
        with self._lock:
            self._db.execute("UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE state = 'cancelling'", (now,))
            self._db.execute(
                "UPDATE jobs SET state = 'interrupted', finished_at = ?, "
                "error = COALESCE(error, 'the service stopped while the job was running') "
                "WHERE state = 'running'", (now,))
            rows = self._db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq").fetchall()
        return [r[0] for r in rows]
