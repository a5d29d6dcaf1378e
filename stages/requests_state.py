"""Durable state of user requests and ingest jobs, owned by the pipeline stage.

Each request is one JSON document keyed by its identifier, rewritten on
every change, in ``<data>/requests.sqlite3``. Keeping it apart from the
image database means a flood of status changes never competes with the
indexers for the image database's write lock.
"""

from __future__ import annotations

import collections
import json
import sqlite3
import threading
import time
from pathlib import Path

# Recently written requests kept in memory, so status polls skip SQLite.
CACHED_REQUESTS = 10000

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,              -- search, query, scan
    document TEXT NOT NULL,
    finished_at REAL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ingest_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document TEXT NOT NULL,
    finished_at REAL,
    updated_at REAL NOT NULL
);
"""


class RequestsState:
    """Thread-safe store of request and job documents."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.connection = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.connection.executescript(SCHEMA)
        self.cache: collections.OrderedDict[str, dict] = collections.OrderedDict()

    # Requests

    def save_request(self, key: str, kind: str, document: dict) -> None:
        finished = time.time() if document.get("status") == "END" else None
        with self.lock:
            self.cache[key] = json.loads(json.dumps(document))
            self.cache.move_to_end(key)
            if len(self.cache) > CACHED_REQUESTS:
                self.cache.popitem(last=False)
            self.connection.execute(
                "INSERT INTO requests (key, kind, document, finished_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "document = excluded.document, "
                "finished_at = COALESCE(requests.finished_at, excluded.finished_at), "
                "updated_at = excluded.updated_at",
                (key, kind, json.dumps(document), finished, time.time()),
            )

    def load_request(self, key: str) -> dict | None:
        with self.lock:
            cached = self.cache.get(key)
            if cached is not None:
                return json.loads(json.dumps(cached))
            row = self.connection.execute(
                "SELECT document FROM requests WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def unfinished_requests(self, kind: str) -> list[tuple[str, dict]]:
        with self.lock:
            rows = self.connection.execute(
                "SELECT key, document FROM requests WHERE kind = ? AND "
                "finished_at IS NULL ORDER BY updated_at",
                (kind,),
            ).fetchall()
        return [(key, json.loads(document)) for key, document in rows]

    def count_unfinished(self) -> dict[str, int]:
        with self.lock:
            rows = self.connection.execute(
                "SELECT kind, COUNT(*) FROM requests WHERE finished_at IS NULL "
                "GROUP BY kind"
            ).fetchall()
        return dict(rows)

    def drop_finished(self, keep_secs_by_outcome) -> int:
        """Delete finished requests older than their retention; return how many.

        ``keep_secs_by_outcome(document) -> float`` gives each request's
        retention from its outcome.
        """
        now = time.time()
        with self.lock:
            rows = self.connection.execute(
                "SELECT key, document, finished_at FROM requests "
                "WHERE finished_at IS NOT NULL"
            ).fetchall()
            expired = [
                key for key, document, finished_at in rows
                if now - finished_at > keep_secs_by_outcome(json.loads(document))
            ]
            for key in expired:
                self.connection.execute("DELETE FROM requests WHERE key = ?", (key,))
                self.cache.pop(key, None)
        return len(expired)

    # Ingest jobs

    def create_job(self, document: dict) -> int:
        with self.lock:
            cursor = self.connection.execute(
                "INSERT INTO ingest_jobs (document, updated_at) VALUES (?, ?)",
                (json.dumps(document), time.time()),
            )
            return cursor.lastrowid

    def save_job(self, job_id: int, document: dict) -> None:
        finished = time.time() if document.get("status") in ("done", "failed") else None
        with self.lock:
            self.connection.execute(
                "UPDATE ingest_jobs SET document = ?, updated_at = ?, "
                "finished_at = COALESCE(finished_at, ?) WHERE id = ?",
                (json.dumps(document), time.time(), finished, job_id),
            )

    def load_job(self, job_id: int) -> dict | None:
        with self.lock:
            row = self.connection.execute(
                "SELECT document FROM ingest_jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def unfinished_jobs(self) -> list[dict]:
        with self.lock:
            rows = self.connection.execute(
                "SELECT document FROM ingest_jobs WHERE finished_at IS NULL "
                "ORDER BY id"
            ).fetchall()
        return [json.loads(row[0]) for row in rows]
