"""SQLite ledger store (the embedded default).

WAL journal with ``synchronous=NORMAL``: a commit is appended to the WAL in the OS page
cache without an fsync, so it survives any crash of the process (SIGKILL included) and
the database is never corrupted; only a power loss or kernel crash can drop the most
recent commits, never reorder or tear them. ``?synchronous=full`` fsyncs every commit
for hosts where power loss must not lose the tail.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from orchestrator.errors import LedgerConflict, LedgerError
from orchestrator.ledger.store import Control, RunRow, StoredEvent
from orchestrator.trust import SignedHead

# The events that change a run's status; ``runs()`` reports the latest of them.
LIFECYCLE_KINDS = (
    "RunStarted",
    "RunResumed",
    "PauseRequested",
    "RunParked",
    "RunAborted",
    "RunCompleted",
)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        plan_name TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE events (
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE controls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        command TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at TEXT NOT NULL,
        handled INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX controls_pending ON controls(run_id, handled);
    """,
    """
    CREATE TABLE heads (
        run_id TEXT PRIMARY KEY,
        head TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
)


class SqliteLedgerStore:
    """A ledger in one SQLite file; many readers, one writer per run."""

    def __init__(self, path: Path, synchronous: str = "normal") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = f"sqlite:///{path}"
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @property
    def durability(self) -> str:
        """The journal and sync modes in force, e.g. ``journal_mode=WAL synchronous=NORMAL``."""
        journal = self._db.execute("PRAGMA journal_mode").fetchone()[0]
        sync = self._db.execute("PRAGMA synchronous").fetchone()[0]
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        return f"journal_mode={journal.upper()} synchronous={names.get(sync, sync)}"

    def create_run(
        self,
        run_id: str,
        plan_name: str,
        created_at: str,
        first: Sequence[StoredEvent],
        head: SignedHead | None = None,
    ) -> None:
        self._write(run_id, first, head, (plan_name, created_at))

    def append(
        self, run_id: str, events: Sequence[StoredEvent], head: SignedHead | None = None
    ) -> None:
        self._write(run_id, events, head)

    def read_signed(self, run_id: str) -> tuple[list[StoredEvent], SignedHead | None]:
        db = self._db
        db.execute("BEGIN")
        try:
            return self.read(run_id), self.signed_head(run_id)
        finally:
            db.execute("COMMIT")

    def signed_head(self, run_id: str) -> SignedHead | None:
        row = self._db.execute("SELECT head FROM heads WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            return None
        return SignedHead.from_json(row[0])

    def _write(
        self,
        run_id: str,
        events: Sequence[StoredEvent],
        head: SignedHead | None,
        new_run: tuple[str, str] | None = None,
    ) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if new_run is not None:
                db.execute(
                    "INSERT INTO runs(run_id, plan_name, created_at) VALUES (?, ?, ?)",
                    (run_id, *new_run),
                )
            db.executemany(
                "INSERT INTO events(run_id, seq, kind, body, hash) VALUES (?, ?, ?, ?, ?)",
                [(run_id, e.seq, e.kind, e.body, e.hash) for e in events],
            )
            if head is not None:
                db.execute(
                    "INSERT OR REPLACE INTO heads(run_id, head) VALUES (?, ?)",
                    (run_id, head.to_json()),
                )
            db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            db.execute("ROLLBACK")
            raise LedgerConflict(
                f"run {run_id}: another writer appended at seq {events[0].seq}"
            ) from exc
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise LedgerError(f"run {run_id}: could not write to {self.path}: {exc}") from exc
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def read(self, run_id: str, after_seq: int = -1) -> list[StoredEvent]:
        rows = self._db.execute(
            "SELECT seq, kind, body, hash FROM events WHERE run_id=? AND seq>? ORDER BY seq",
            (run_id, after_seq),
        ).fetchall()
        return [StoredEvent(s, k, bytes(b), h) for s, k, b, h in rows]

    def head(self, run_id: str) -> StoredEvent | None:
        row = self._db.execute(
            "SELECT seq, kind, body, hash FROM events WHERE run_id=? ORDER BY seq DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return None if row is None else StoredEvent(row[0], row[1], bytes(row[2]), row[3])

    def runs(self) -> list[RunRow]:
        lifecycle = ",".join(f"'{k}'" for k in LIFECYCLE_KINDS)
        rows = self._db.execute(
            f"""
            SELECT r.run_id, r.plan_name, r.created_at, last.seq, last.body, life.kind, life.body
            FROM runs r
            JOIN events last ON last.run_id = r.run_id
             AND last.seq = (SELECT max(seq) FROM events WHERE run_id = r.run_id)
            JOIN events life ON life.run_id = r.run_id
             AND life.seq = (SELECT max(seq) FROM events
                             WHERE run_id = r.run_id AND kind IN ({lifecycle}))
            ORDER BY r.created_at, r.run_id
            """
        ).fetchall()
        out = []
        for run_id, plan_name, created, seq, last_body, kind, life_body in rows:
            ts = json.loads(bytes(last_body)).get("ts", "")
            life = json.loads(bytes(life_body))
            out.append(RunRow(run_id, plan_name, created, seq, ts, kind, life))
        return out

    def has_run(self, run_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row is not None

    def send_control(self, run_id: str, command: str, source: str) -> None:
        self._db.execute(
            "INSERT INTO controls(run_id, command, source, created_at) VALUES (?, ?, ?, ?)",
            (run_id, command, source, datetime.now(UTC).isoformat()),
        )

    def take_controls(self, run_id: str) -> list[Control]:
        db = self._db
        rows = db.execute(
            "SELECT id, command, source FROM controls WHERE run_id=? AND handled=0 ORDER BY id",
            (run_id,),
        ).fetchall()
        if rows:
            db.execute(
                "UPDATE controls SET handled=1 WHERE run_id=? AND id<=?", (run_id, rows[-1][0])
            )
        return [Control(i, c, s) for i, c, s in rows]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
