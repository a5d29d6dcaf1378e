"""SQLite store of accounts, tweets, images and their descriptors.

The store is the one durable owner of indexed data: the FAISS index held
by the searcher is rebuilt from it whenever it is missing or out of step.
Every process opens its own connection; the database runs in WAL mode so
readers never block the single writer.

Image ids come from ``AUTOINCREMENT`` and SQLite admits one writer at a
time, so ids become visible in increasing order. A reader that has seen
every id up to N therefore only needs ``id > N`` to catch up.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,              -- X numeric user id
    handle TEXT NOT NULL,
    handle_lower TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'ok',    -- ok, not_found, suspended, protected, error
    state_detail TEXT,
    first_scan_done INTEGER NOT NULL DEFAULT 0,
    cursor TEXT,                         -- newest tweet id stored by a complete scan
    last_update_at REAL,                 -- unix time of the last complete scan
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS accounts_handle ON accounts(handle_lower);
CREATE TABLE IF NOT EXISTS tweets (
    id INTEGER PRIMARY KEY,              -- X tweet id
    account_id INTEGER NOT NULL,
    created_at REAL,                     -- unix time the tweet was posted
    image_count INTEGER NOT NULL,
    source TEXT NOT NULL                 -- archive, x_api, snscrape
);
CREATE INDEX IF NOT EXISTS tweets_account ON tweets(account_id);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tweet_id INTEGER NOT NULL,
    position INTEGER NOT NULL,           -- 1-based position in the tweet
    account_id INTEGER NOT NULL,
    location TEXT NOT NULL,              -- file path or URL the image came from
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    phash BLOB NOT NULL,                 -- 8 bytes, the earlier system's pHash
    pdq BLOB NOT NULL,                   -- 32 bytes
    pdq_quality INTEGER NOT NULL,        -- 0-100, PDQ's own quality score
    indexed_at REAL NOT NULL,
    UNIQUE (tweet_id, position)
);
CREATE INDEX IF NOT EXISTS images_account ON images(account_id);
CREATE TABLE IF NOT EXISTS local_features (
    image_id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS failed_images (
    tweet_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    account_id INTEGER NOT NULL,
    location TEXT NOT NULL,
    error TEXT NOT NULL,
    permanent INTEGER NOT NULL,          -- 1: never retried (bad file, 404)
    attempts INTEGER NOT NULL DEFAULT 1,
    next_attempt_at REAL,
    failed_at REAL NOT NULL,
    PRIMARY KEY (tweet_id, position)
);
"""


class StoreError(RuntimeError):
    """The database could not be opened or is from an unknown version."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a tweet, ready to be stored with its descriptors."""

    tweet_id: int
    position: int
    image_count: int
    account_id: int
    location: str
    width: int
    height: int
    phash: bytes
    pdq: bytes
    pdq_quality: int
    local_features: bytes | None = None
    tweet_created_at: float | None = None
    source: str = "archive"


@dataclass(frozen=True)
class StoredImage:
    id: int
    tweet_id: int
    position: int
    image_count: int
    account_id: int
    handle: str


class Store:
    """A connection to the database, used by one thread at a time."""

    def __init__(self, path: str | Path, timeout_secs: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.connection = sqlite3.connect(
                self.path,
                timeout=timeout_secs,
                isolation_level=None,
                # A Store may be built in one thread and used in another, but
                # by one thread at a time.
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            raise StoreError(f"cannot open database {self.path}: {error}") from error
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.connection.execute("PRAGMA foreign_keys=ON")
        self._install()

    def _install(self) -> None:
        # Every statement of the schema is idempotent, so processes that
        # start together may all run it.
        self.connection.executescript(SCHEMA)
        with self.transaction():
            row = self.connection.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                self.connection.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.path} has schema version {row[0]}, "
                    f"this program reads version {SCHEMA_VERSION}"
                )

    def close(self) -> None:
        self.connection.close()

    def transaction(self) -> "_Transaction":
        return _Transaction(self.connection)

    # Accounts

    def upsert_account(self, account_id: int, handle: str) -> None:
        """Create the account or record its current handle (renames keep the id)."""
        self.connection.execute(
            "INSERT INTO accounts (id, handle, handle_lower, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "handle = excluded.handle, handle_lower = excluded.handle_lower",
            (account_id, handle, handle.lower(), time.time()),
        )

    def set_account_state(
        self, account_id: int, state: str, detail: str | None = None
    ) -> None:
        self.connection.execute(
            "UPDATE accounts SET state = ?, state_detail = ? WHERE id = ?",
            (state, detail, account_id),
        )

    def finish_account_scan(self, account_id: int, cursor: str | None) -> None:
        """Record a complete scan; ``cursor`` is the newest tweet id stored."""
        self.connection.execute(
            "UPDATE accounts SET first_scan_done = 1, last_update_at = ?, "
            "cursor = COALESCE(?, cursor) WHERE id = ?",
            (time.time(), cursor, account_id),
        )

    def find_account(self, handle: str) -> dict | None:
        """Return the account row for a handle (case-insensitive), or None."""
        row = self.connection.execute(
            "SELECT id, handle, state, state_detail, first_scan_done, cursor, "
            "last_update_at FROM accounts WHERE handle_lower = ? "
            "ORDER BY created_at DESC LIMIT 1",
            (handle.lstrip("@").lower(),),
        ).fetchone()
        return None if row is None else _account_dict(row)

    def get_account(self, account_id: int) -> dict | None:
        row = self.connection.execute(
            "SELECT id, handle, state, state_detail, first_scan_done, cursor, "
            "last_update_at FROM accounts WHERE id = ?",
            (account_id,),
        ).fetchone()
        return None if row is None else _account_dict(row)

    def list_accounts(self) -> list[dict]:
        rows = self.connection.execute(
            "SELECT id, handle, state, state_detail, first_scan_done, cursor, "
            "last_update_at FROM accounts ORDER BY handle_lower"
        ).fetchall()
        return [_account_dict(row) for row in rows]

    # Images

    def known_image_keys(self, account_id: int | None = None) -> set[tuple[int, int]]:
        """Return (tweet_id, position) of every image stored or failed for good."""
        where = "" if account_id is None else " WHERE account_id = ?"
        args = () if account_id is None else (account_id,)
        keys = set(
            self.connection.execute(
                "SELECT tweet_id, position FROM images" + where, args
            ).fetchall()
        )
        keys.update(
            self.connection.execute(
                "SELECT tweet_id, position FROM failed_images"
                + (where + " AND" if where else " WHERE")
                + " permanent = 1",
                args,
            ).fetchall()
        )
        return keys

    def has_image(self, tweet_id: int, position: int) -> bool:
        row = self.connection.execute(
            "SELECT 1 FROM images WHERE tweet_id = ? AND position = ?",
            (tweet_id, position),
        ).fetchone()
        return row is not None

    def add_image(self, record: ImageRecord) -> tuple[int, bool]:
        """Store an image and its tweet; return (image id, True if it is new).

        Storing the same (tweet_id, position) twice keeps the first copy.
        """
        with self.transaction():
            self.connection.execute(
                "INSERT INTO tweets (id, account_id, created_at, image_count, source)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "image_count = MAX(image_count, excluded.image_count)",
                (
                    record.tweet_id,
                    record.account_id,
                    record.tweet_created_at,
                    record.image_count,
                    record.source,
                ),
            )
            cursor = self.connection.execute(
                "INSERT OR IGNORE INTO images (tweet_id, position, account_id, "
                "location, width, height, phash, pdq, pdq_quality, indexed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.tweet_id,
                    record.position,
                    record.account_id,
                    record.location,
                    record.width,
                    record.height,
                    record.phash,
                    record.pdq,
                    record.pdq_quality,
                    time.time(),
                ),
            )
            if cursor.rowcount == 0:
                row = self.connection.execute(
                    "SELECT id FROM images WHERE tweet_id = ? AND position = ?",
                    (record.tweet_id, record.position),
                ).fetchone()
                return row[0], False
            image_id = cursor.lastrowid
            if record.local_features is not None:
                self.connection.execute(
                    "INSERT OR REPLACE INTO local_features VALUES (?, ?)",
                    (image_id, record.local_features),
                )
            self.connection.execute(
                "DELETE FROM failed_images WHERE tweet_id = ? AND position = ?",
                (record.tweet_id, record.position),
            )
            return image_id, True

    def record_failed_image(
        self,
        tweet_id: int,
        position: int,
        account_id: int,
        location: str,
        error: str,
        permanent: bool,
        retry_after_secs: float | None = None,
    ) -> None:
        """Record an image that could not be indexed, with why and when to retry."""
        now = time.time()
        next_attempt = None if permanent else now + (retry_after_secs or 600.0)
        self.connection.execute(
            "INSERT INTO failed_images (tweet_id, position, account_id, location, "
            "error, permanent, next_attempt_at, failed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(tweet_id, position) DO "
            "UPDATE SET error = excluded.error, permanent = excluded.permanent, "
            "attempts = attempts + 1, next_attempt_at = excluded.next_attempt_at, "
            "failed_at = excluded.failed_at",
            (tweet_id, position, account_id, location, error, int(permanent),
             next_attempt, now),
        )

    def failed_images(self, account_id: int | None = None) -> list[dict]:
        where = "" if account_id is None else " WHERE account_id = ?"
        args = () if account_id is None else (account_id,)
        rows = self.connection.execute(
            "SELECT tweet_id, position, account_id, location, error, permanent, "
            "attempts, next_attempt_at FROM failed_images" + where + " ORDER BY "
            "tweet_id, position",
            args,
        ).fetchall()
        keys = ("tweet_id", "position", "account_id", "location", "error",
                "permanent", "attempts", "next_attempt_at")
        return [dict(zip(keys, row)) for row in rows]

    def iter_descriptors(
        self, after_id: int = 0, batch_size: int = 10000
    ) -> Iterator[list[tuple[int, int, bytes, int]]]:
        """Yield batches of (image id, account id, pdq, pdq quality) by id."""
        last = after_id
        while True:
            rows = self.connection.execute(
                "SELECT id, account_id, pdq, pdq_quality FROM images "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (last, batch_size),
            ).fetchall()
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def max_image_id(self) -> int:
        row = self.connection.execute("SELECT MAX(id) FROM images").fetchone()
        return row[0] or 0

    def image_count(self) -> int:
        return self.connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def get_images(self, image_ids: Iterable[int]) -> dict[int, StoredImage]:
        """Return the stored images with these ids, keyed by id."""
        ids = list(image_ids)
        found: dict[int, StoredImage] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.connection.execute(
                "SELECT images.id, images.tweet_id, images.position, "
                "tweets.image_count, images.account_id, accounts.handle "
                "FROM images JOIN tweets ON tweets.id = images.tweet_id "
                "LEFT JOIN accounts ON accounts.id = images.account_id "
                f"WHERE images.id IN ({marks})",
                chunk,
            ).fetchall()
            for row in rows:
                found[row[0]] = StoredImage(*row[:5], handle=row[5] or "")
        return found

    def load_local_features(self, image_ids: Iterable[int]) -> dict[int, bytes]:
        ids = list(image_ids)
        found: dict[int, bytes] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.connection.execute(
                f"SELECT image_id, data FROM local_features WHERE image_id IN ({marks})",
                chunk,
            ).fetchall()
            found.update(rows)
        return found

    def counts(self) -> dict[str, int]:
        """Return the numbers shown by ``/stats``."""
        connection = self.connection
        return {
            "indexed_tweets_count": connection.execute(
                "SELECT COUNT(*) FROM tweets").fetchone()[0],
            "indexed_images_count": self.image_count(),
            "indexed_accounts_count": connection.execute(
                "SELECT COUNT(*) FROM accounts").fetchone()[0],
            "failed_images_count": connection.execute(
                "SELECT COUNT(*) FROM failed_images").fetchone()[0],
        }


_thread_stores = threading.local()


def thread_store(path: str | Path) -> Store:
    """Return this thread's Store for the database at ``path``, opening it once."""
    stores = getattr(_thread_stores, "stores", None)
    if stores is None:
        stores = _thread_stores.stores = {}
    key = str(path)
    store = stores.get(key)
    if store is None:
        store = stores[key] = Store(path)
    return store


def _account_dict(row: tuple) -> dict:
    keys = ("id", "handle", "state", "state_detail", "first_scan_done", "cursor",
            "last_update_at")
    return dict(zip(keys, row))


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on an exception.

    Nested use joins the outer transaction.
    """

    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection
        self.outermost = False

    def __enter__(self) -> sqlite3.Connection:
        if not self.connection.in_transaction:
            self.connection.execute("BEGIN IMMEDIATE")
            self.outermost = True
        return self.connection

    def __exit__(self, kind, value, traceback) -> None:
        if not self.outermost:
            return
        if kind is None:
            self.connection.execute("COMMIT")
        else:
            self.connection.execute("ROLLBACK")
