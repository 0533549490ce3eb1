"""SQLite ledger store (the embedded default).

WAL journal with ``synchronous=NORMAL``: a commit is appended to the WAL in the OS page
cache without an fsync, so it survives any crash of the process (SIGKILL included) and
the database is never corrupted; only a power loss or kernel crash can drop the most
recent commits, never reorder or tear them. ``?synchronous=full`` fsyncs every commit
for hosts where power loss must not lose the tail.

Every ``sqlite3`` error leaves this module as a LedgerError: a file SQLite cannot read as
a database (random bytes, truncated, malformed) is LedgerCorrupt; one it cannot open or
write (a directory, a read-only file system, a locked database) is LedgerError.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from orchestrator.errors import LedgerConflict, LedgerCorrupt, LedgerError
from orchestrator.ledger.head import SignedHead
from orchestrator.ledger.store import Control, RunRow, StoredEvent, parse

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
    """A ledger in one SQLite file; many readers, one writer per run.

    With ``create=False`` nothing is written: a missing or empty file reads as an empty
    ledger (an in-memory database stands in), migrations are not run, and a ledger in a
    directory this process cannot write (a read-only home) is opened immutable, since
    SQLite could not create its WAL index there. A non-empty file must hold a ledger.
    """

    def __init__(self, path: Path, synchronous: str = "normal", *, create: bool = True) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        if path.is_dir():
            raise LedgerError(f"the ledger {self._shown} is a directory, not a SQLite file")
        fresh = not path.exists() or path.stat().st_size == 0
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LedgerError(f"cannot create the ledger {self._shown}: {exc}") from None
        with self._mapped():
            try:
                self._open(synchronous, create=create, fresh=fresh)
            except BaseException:
                if hasattr(self, "_db"):
                    self._db.close()  # a connection left open would leave WAL files behind
                raise

    def _open(self, synchronous: str, *, create: bool, fresh: bool) -> None:
        path = self.path
        if not create and fresh:
            self._db = sqlite3.connect(":memory:", isolation_level=None)
            self._migrate()
            return
        if not create and not os.access(path.parent, os.W_OK):
            uri = f"{path.absolute().as_uri()}?mode=ro&immutable=1"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._require_ledger()
            return
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=10000")
        if not fresh:
            self._require_ledger(being_created=create)
        if create:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.execute("PRAGMA foreign_keys=ON")
        if create:
            self._migrate()

    @property
    def _shown(self) -> str:
        return os.fsencode(self.path).decode("utf-8", "backslashreplace")

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        """Turn sqlite3's errors into the ledger's (see the module docstring)."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise LedgerError(f"cannot use the ledger {self._shown}: {exc}") from exc
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # text that is not UTF-8
            raise LedgerCorrupt(
                f"the ledger {self._shown} is damaged: {exc}; restore it from a backup or "
                "from checkpoints (`orchestrator resume RUN --from STORE`)"
            ) from exc

    def _require_ledger(self, *, being_created: bool = False) -> None:
        """Refuse a file SQLite reads as a database but that holds no ledger (SQLite takes
        a file of a few stray bytes for an empty database, and would write over it).
        ``being_created``: an empty SQLite database is accepted, for it is a ledger
        another process is creating right now (its migration, which ours waits for)."""
        found = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='events'"
        ).fetchone()
        if found is None:
            if being_created and self._empty_database():
                return
            raise LedgerCorrupt(
                f"{self._shown} is not an Orchestrator ledger (it has no events table); "
                "move it away, or point --home or --ledger elsewhere"
            )

    def _empty_database(self) -> bool:
        """A real SQLite file (its header says so) with no tables yet."""
        with open(self.path, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                return False
        tables: int = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        return tables == 0

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
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @property
    def durability(self) -> str:
        """The journal and sync modes in force, e.g. ``journal_mode=WAL synchronous=NORMAL``."""
        with self._mapped():
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
        with self._mapped():
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
            raise LedgerError(f"run {run_id}: could not write to {self._shown}: {exc}") from exc
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def read(self, run_id: str, after_seq: int = -1) -> list[StoredEvent]:
        with self._mapped():
            rows = self._db.execute(
                "SELECT seq, kind, body, hash FROM events WHERE run_id=? AND seq>? ORDER BY seq",
                (run_id, after_seq),
            ).fetchall()
        return [StoredEvent(s, k, bytes(b), h) for s, k, b, h in rows]

    def head(self, run_id: str) -> StoredEvent | None:
        with self._mapped():
            row = self._db.execute(
                "SELECT seq, kind, body, hash FROM events WHERE run_id=? ORDER BY seq DESC LIMIT 1",
                (run_id,),
            ).fetchone()
        return None if row is None else StoredEvent(row[0], row[1], bytes(row[2]), row[3])

    def runs(self) -> list[RunRow]:
        lifecycle = ",".join(f"'{k}'" for k in LIFECYCLE_KINDS)
        with self._mapped():
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
            ts = parse(bytes(last_body), f"run {run_id}").get("ts", "")
            life = parse(bytes(life_body), f"run {run_id}")
            out.append(RunRow(run_id, plan_name, created, seq, ts, kind, life))
        return out

    def has_run(self, run_id: str) -> bool:
        with self._mapped():
            row = self._db.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row is not None

    def send_control(self, run_id: str, command: str, source: str) -> None:
        with self._mapped():
            self._db.execute(
                "INSERT INTO controls(run_id, command, source, created_at) VALUES (?, ?, ?, ?)",
                (run_id, command, source, datetime.now(UTC).isoformat()),
            )

    def take_controls(self, run_id: str) -> list[Control]:
        db = self._db
        with self._mapped():
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
