"""Tweet listings from archives on disk: gallery-dl folders and X data exports.

``list_archive`` walks a folder and recognises two layouts anywhere below it,
so the path may be a gallery-dl base folder, its ``twitter/`` folder, one
handle folder, an X export, or a parent holding several of them:

- gallery-dl: ``<tweet_id>_<num>.<ext>`` files with metadata in a
  ``<file>.json`` sidecar (``--write-metadata``), in one ``data.jsonl`` per
  folder (metadata mode ``jsonl``), or only in one ``info.json`` per folder
  (``--write-info-json``).
- X data export: a ``data/`` folder with ``account.js``, ``tweets.js``
  (possibly split into ``tweets-part1.js`` ...; very old exports use
  ``tweet.js``) and media files named ``<tweet_id>-<media name>`` in
  ``data/tweets_media/`` (older exports: ``data/tweet_media/``).

Only photos are listed. An image's position is its 1-based place among all
media of the tweet, videos and GIFs included, as in gallery-dl's ``num`` and
the ``/photo/<n>`` links of x.com, and ``image_count`` counts all of them.
Retweets and media reused from another account are skipped because their
images belong to someone else. Files that cannot be read are listed in
``ArchiveListing.problems`` and the walk goes on.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlsplit

from broker.config import Config
from stages.sources.base import (
    AccountInfo,
    AccountState,
    AccountUnavailableError,
    ArchiveListing,
    ImageRef,
    TweetPage,
    TweetRecord,
)

logger = logging.getLogger(__name__)

GALLERY_DL_FILE = re.compile(r"^(\d+)_(\d+)\.([A-Za-z0-9]+)$")
PHOTO_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp"})
X_EXPORT_TWEET_FILE = re.compile(r"^tweets?(?:-part(\d+))?\.js$")
X_EXPORT_MEDIA_FOLDERS = ("tweets_media", "tweet_media")
GALLERY_DL_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
X_EXPORT_DATE_FORMAT = "%a %b %d %H:%M:%S %z %Y"


class _InvalidMetadata(ValueError):
    """A metadata record lacks a field or has one of the wrong type."""


@dataclass
class _TweetBuilder:
    tweet_id: int
    account_id: int
    handle: str
    created_at: float | None
    image_count: int
    paths: dict[int, str] = field(default_factory=dict)

    def build(self) -> TweetRecord:
        images = tuple(
            ImageRef(position=position, location=path, is_file=True)
            for position, path in sorted(self.paths.items())
        )
        return TweetRecord(
            tweet_id=self.tweet_id,
            account_id=self.account_id,
            handle=self.handle,
            created_at=self.created_at,
            images=images,
            image_count=max(self.image_count, len(images)),
            source="archive",
        )


class _Collector:
    """Tweets and problems gathered during one walk."""

    def __init__(self) -> None:
        self.tweets: dict[int, _TweetBuilder] = {}
        self.problems: list[tuple[str, str]] = []

    def add_problem(self, path: str | os.PathLike, reason: str) -> None:
        logger.debug("skipped %s: %s", path, reason)
        self.problems.append((str(path), reason))

    def add_photo(
        self,
        *,
        tweet_id: int,
        account_id: int,
        handle: str,
        created_at: float | None,
        image_count: int,
        position: int,
        path: str | None,
    ) -> None:
        """Record one photo of a tweet; ``path`` is None when it is missing."""
        builder = self.tweets.get(tweet_id)
        if builder is None:
            builder = _TweetBuilder(
                tweet_id, account_id, handle, created_at, image_count
            )
            self.tweets[tweet_id] = builder
        builder.image_count = max(builder.image_count, image_count, position)
        if path is not None:
            builder.paths.setdefault(position, path)

    def listing(self) -> ArchiveListing:
        records = [builder.build() for builder in self.tweets.values()]
        records.sort(key=lambda record: record.tweet_id, reverse=True)
        return ArchiveListing(tweets=records, problems=self.problems)


def list_archive(path: str | os.PathLike) -> ArchiveListing:
    """List the tweets with photos of every archive found under ``path``.

    Tweets come newest first, each image with the absolute path of its
    file. Unreadable or invalid files, and a missing ``path``, are reported
    in ``problems`` instead of raising.
    """
    root = Path(path).absolute()
    collector = _Collector()
    if not root.is_dir():
        collector.add_problem(root, "archive folder not found or not a folder")
        return collector.listing()

    def report_walk_error(error: OSError) -> None:
        collector.add_problem(error.filename or root, f"unreadable: {error}")

    for folder, subfolders, files in os.walk(root, onerror=report_walk_error):
        folder_path = Path(folder)
        if _is_x_export_data(folder_path, files):
            _read_x_export(folder_path, files, collector)
            subfolders.clear()
            continue
        _read_gallery_dl_folder(folder_path, files, collector)
        subfolders.sort()

    listing = collector.listing()
    logger.info(
        "listed %d tweets with photos in %s, %d problems",
        len(listing.tweets),
        root,
        len(listing.problems),
    )
    return listing


# gallery-dl ---------------------------------------------------------------


def _read_gallery_dl_folder(
    folder: Path, files: list[str], collector: _Collector
) -> None:
    media_files = {}
    for name in files:
        match = GALLERY_DL_FILE.match(name)
        if match:
            media_files[name] = (int(match.group(1)), int(match.group(2)))
    sidecars = [
        name for name in files if name.endswith(".json") and name != "info.json"
    ]
    if not media_files and not sidecars:
        return

    jsonl_records = _read_data_jsonl(folder, files, collector)
    info = _read_info_json(folder, files, collector)
    described = set()

    for sidecar in sorted(sidecars):
        media_name = sidecar[: -len(".json")]
        if not GALLERY_DL_FILE.match(media_name):
            continue
        sidecar_path = folder / sidecar
        metadata = _read_json_file(sidecar_path, collector)
        if metadata is None:
            continue
        described.add(media_name)
        media_path = folder / media_name if media_name in media_files else None
        _add_gallery_dl_media(metadata, media_path, sidecar_path, collector)

    for media_name, key in sorted(media_files.items()):
        if media_name in described:
            continue
        media_path = folder / media_name
        if (folder / f"{media_name}.json").exists():
            # The sidecar exists but was unreadable, which is already reported.
            continue
        if key in jsonl_records:
            line_path = f"{folder / 'data.jsonl'}:{jsonl_records[key][0]}"
            metadata = jsonl_records[key][1]
            _add_gallery_dl_media(metadata, media_path, line_path, collector)
        elif info is not None:
            _add_info_json_media(info, key, media_path, collector)
        else:
            collector.add_problem(
                media_path, f"no metadata: {media_name}.json is missing"
            )


def _read_data_jsonl(
    folder: Path, files: list[str], collector: _Collector
) -> dict[tuple[int, int], tuple[int, dict]]:
    """Map (tweet_id, num) to (line number, metadata) of ``data.jsonl``."""
    if "data.jsonl" not in files:
        return {}
    path = folder / "data.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        collector.add_problem(path, f"unreadable: {error}")
        return {}
    records = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            metadata = json.loads(line)
            key = (_int_field(metadata, "tweet_id"), _int_field(metadata, "num"))
        except (json.JSONDecodeError, _InvalidMetadata) as error:
            collector.add_problem(f"{path}:{number}", f"invalid metadata: {error}")
            continue
        records[key] = (number, metadata)
    return records


def _read_info_json(
    folder: Path, files: list[str], collector: _Collector
) -> dict | None:
    if "info.json" not in files:
        return None
    return _read_json_file(folder / "info.json", collector)


def _read_json_file(path: Path, collector: _Collector) -> dict | None:
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, UnicodeDecodeError) as error:
        collector.add_problem(path, f"unreadable: {error}")
        return None
    except json.JSONDecodeError as error:
        collector.add_problem(path, f"invalid JSON: {error}")
        return None
    if not isinstance(data, dict):
        collector.add_problem(path, "invalid metadata: not a JSON object")
        return None
    return data


def _add_gallery_dl_media(
    metadata: dict,
    media_path: Path | None,
    metadata_path: str | os.PathLike,
    collector: _Collector,
) -> None:
    """Record one gallery-dl file described by its metadata record."""
    if metadata.get("category", "twitter") != "twitter":
        return
    try:
        tweet_id = _int_field(metadata, "tweet_id")
        position = _int_field(metadata, "num")
        count = int(metadata.get("count") or position)
        media_type = metadata.get("type", "photo")
        extension = str(metadata.get("extension", "")).lower()
        owner = _gallery_dl_user(metadata, "user")
        author = _gallery_dl_user(metadata, "author") or owner
        if author is None:
            raise _InvalidMetadata("missing 'author' and 'user'")
        created_at = _parse_time(metadata.get("date"), GALLERY_DL_DATE_FORMAT)
    except (_InvalidMetadata, TypeError, ValueError) as error:
        collector.add_problem(metadata_path, f"invalid metadata: {error}")
        return

    if media_type != "photo" or (extension and extension not in PHOTO_EXTENSIONS):
        return
    if owner is not None and owner[0] != author[0]:
        # A retweet or quoted tweet: the media belong to its author.
        return
    if _is_reused_from_other_account(metadata, author[0]):
        return
    collector.add_photo(
        tweet_id=tweet_id,
        account_id=author[0],
        handle=author[1],
        created_at=created_at,
        image_count=count,
        position=position,
        path=None if media_path is None else str(media_path),
    )


def _add_info_json_media(
    info: dict, key: tuple[int, int], media_path: Path, collector: _Collector
) -> None:
    """Record a file whose folder has only an ``info.json``.

    The folder's owner is taken as the author, so a retweet downloaded
    without per-file metadata is listed as the owner's tweet.
    """
    extension = media_path.suffix.lstrip(".").lower()
    if extension not in PHOTO_EXTENSIONS:
        return
    try:
        owner = _gallery_dl_user(info, "user") or _gallery_dl_user(info, "author")
    except _InvalidMetadata as error:
        collector.add_problem(media_path.parent / "info.json", f"invalid: {error}")
        return
    if owner is None:
        collector.add_problem(media_path, "no metadata: info.json names no user")
        return
    tweet_id, position = key
    # NOTE: without per-file metadata the media count is unknown, so
    # image_count ends up as the highest position found on disk.
    collector.add_photo(
        tweet_id=tweet_id,
        account_id=owner[0],
        handle=owner[1],
        created_at=None,
        image_count=position,
        position=position,
        path=str(media_path),
    )


def _gallery_dl_user(metadata: dict, key: str) -> tuple[int, str] | None:
    """Return (id, handle) of a gallery-dl user dict, or None if absent."""
    user = metadata.get(key)
    if user is None:
        return None
    if not isinstance(user, dict):
        raise _InvalidMetadata(f"{key!r} is not an object")
    handle = user.get("name")
    if not isinstance(handle, str) or not handle:
        raise _InvalidMetadata(f"{key!r} has no 'name'")
    return _int_field(user, "id"), handle


def _is_reused_from_other_account(metadata: dict, author_id: int) -> bool:
    source_user = metadata.get("source_user")
    if not metadata.get("source_id") or not isinstance(source_user, dict):
        return False
    return source_user.get("id") not in (None, author_id)


def _int_field(data: object, key: str) -> int:
    if not isinstance(data, dict):
        raise _InvalidMetadata("not a JSON object")
    value = data.get(key)
    if isinstance(value, bool) or value is None:
        raise _InvalidMetadata(f"missing {key!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _InvalidMetadata(f"{key!r} is not an integer: {value!r}") from None


def _parse_time(text: object, date_format: str) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.strptime(text, date_format)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


# X data export ------------------------------------------------------------


def _is_x_export_data(folder: Path, files: list[str]) -> bool:
    if folder.name != "data":
        return False
    return "account.js" in files or any(
        X_EXPORT_TWEET_FILE.match(name) for name in files
    )


def _read_x_export(data: Path, files: list[str], collector: _Collector) -> None:
    account = _read_x_account(data, files, collector)
    if account is None:
        return
    account_id, handle = account

    media_folder = next(
        (data / name for name in X_EXPORT_MEDIA_FOLDERS if (data / name).is_dir()),
        None,
    )
    media_files = set()
    if media_folder is not None:
        try:
            media_files = set(os.listdir(media_folder))
        except OSError as error:
            collector.add_problem(media_folder, f"unreadable: {error}")

    tweet_files = sorted(
        (name for name in files if X_EXPORT_TWEET_FILE.match(name)),
        key=_tweet_file_order,
    )
    listed_ids: set[int] = set()
    for name in tweet_files:
        entries = _read_ytd_file(data / name, collector)
        for number, entry in enumerate(entries or (), start=1):
            tweet = entry.get("tweet", entry) if isinstance(entry, dict) else None
            try:
                tweet_id = _add_x_export_tweet(
                    tweet, account, media_folder, media_files, collector
                )
            except (_InvalidMetadata, TypeError, ValueError) as error:
                where = f"{data / name}: element {number}"
                collector.add_problem(where, f"invalid tweet: {error}")
                continue
            listed_ids.add(tweet_id)

    if media_folder is not None:
        _report_x_export_orphans(media_folder, media_files, listed_ids, collector)
    logger.debug("read X export of @%s (%d) in %s", handle, account_id, data)


def _tweet_file_order(name: str) -> int:
    match = X_EXPORT_TWEET_FILE.match(name)
    part = match.group(1) if match else None
    return int(part) if part else 0


def _read_x_account(
    data: Path, files: list[str], collector: _Collector
) -> tuple[int, str] | None:
    path = data / "account.js"
    if "account.js" not in files:
        collector.add_problem(
            path, "missing: the export's tweets cannot be given an account id"
        )
        return None
    entries = _read_ytd_file(path, collector)
    if entries is None:
        return None
    try:
        account = entries[0]["account"]
        return _int_field(account, "accountId"), str(account["username"])
    except (IndexError, KeyError, TypeError, _InvalidMetadata) as error:
        collector.add_problem(path, f"invalid account: {error!r}")
        return None


def _read_ytd_file(path: Path, collector: _Collector) -> list | None:
    """Parse a ``window.YTD.<kind>.part<n> = [...]`` file of an X export."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        collector.add_problem(path, f"unreadable: {error}")
        return None
    _, equals, body = text.partition("=")
    if not equals:
        collector.add_problem(path, "invalid: no 'window.YTD... =' assignment")
        return None
    body = body.strip().removesuffix(";")
    try:
        entries = json.loads(body)
    except json.JSONDecodeError as error:
        collector.add_problem(path, f"invalid JSON (truncated file?): {error}")
        return None
    if not isinstance(entries, list):
        collector.add_problem(path, "invalid: the assigned value is not a list")
        return None
    return entries


def _add_x_export_tweet(
    tweet: object,
    account: tuple[int, str],
    media_folder: Path | None,
    media_files: set[str],
    collector: _Collector,
) -> int:
    """Record the photos of one export tweet and return its id."""
    if not isinstance(tweet, dict):
        raise _InvalidMetadata("not a JSON object")
    tweet_id = _int_field(tweet, "id_str" if "id_str" in tweet else "id")
    text = tweet.get("full_text") or tweet.get("text") or ""
    if "retweeted_status" in tweet or str(text).startswith("RT @"):
        return tweet_id
    entities = tweet.get("extended_entities") or tweet.get("entities") or {}
    if not isinstance(entities, dict):
        raise _InvalidMetadata("'extended_entities' is not an object")
    media = entities.get("media") or []
    if not isinstance(media, list):
        raise _InvalidMetadata("'media' is not a list")

    account_id, handle = account
    created_at = _parse_time(tweet.get("created_at"), X_EXPORT_DATE_FORMAT)
    for position, item in enumerate(media, start=1):
        if not isinstance(item, dict) or item.get("type") != "photo":
            continue
        source_user = item.get("source_user_id_str") or item.get("source_user_id")
        if source_user is not None and int(source_user) != account_id:
            continue
        file_name = f"{tweet_id}-{_media_basename(item)}"
        path = None
        if file_name in media_files and media_folder is not None:
            path = str(media_folder / file_name)
        elif media_folder is not None:
            collector.add_problem(
                media_folder / file_name, "missing: listed in the export's tweets"
            )
        collector.add_photo(
            tweet_id=tweet_id,
            account_id=account_id,
            handle=handle,
            created_at=created_at,
            image_count=len(media),
            position=position,
            path=path,
        )
    return tweet_id


def _media_basename(item: dict) -> str:
    url = item.get("media_url_https") or item.get("media_url")
    if not isinstance(url, str) or not url:
        raise _InvalidMetadata("photo without 'media_url_https'")
    return urlsplit(url).path.rsplit("/", 1)[-1]


def _report_x_export_orphans(
    media_folder: Path,
    media_files: set[str],
    listed_ids: set[int],
    collector: _Collector,
) -> None:
    for name in sorted(media_files):
        tweet_part = name.split("-", 1)[0]
        if tweet_part.isdigit() and int(tweet_part) in listed_ids:
            continue
        collector.add_problem(
            media_folder / name, "orphan: no tweet in the export refers to it"
        )


# Source -------------------------------------------------------------------


class ArchiveSource:
    """A tweet source over archive folders on disk.

    Every call walks the folders again, so files added since the last call
    are seen, at the cost of reading every sidecar each time.
    """

    name = "archive"

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = tuple(Path(path) for path in paths)

    @classmethod
    def from_config(cls, config: Config) -> ArchiveSource:
        base = Path(config.base_folder)
        return cls([base / path for path in config.archives.paths])

    def list_archives(self) -> ArchiveListing:
        """List every configured folder as one listing, newest tweets first."""
        merged = ArchiveListing()
        seen = set()
        for path in self.paths:
            listing = list_archive(path)
            for record in listing.tweets:
                if record.tweet_id not in seen:
                    seen.add(record.tweet_id)
                    merged.tweets.append(record)
            merged.problems.extend(listing.problems)
        merged.tweets.sort(key=lambda record: record.tweet_id, reverse=True)
        return merged

    def lookup_account(self, handle: str) -> AccountInfo:
        tweets = self._account_tweets(handle)
        return AccountInfo(tweets[0].account_id, tweets[0].handle)

    def list_pages(
        self, handle: str, since_tweet_id: int | None = None
    ) -> Iterator[TweetPage]:
        """Yield the account's archived tweets as one page."""
        tweets = self._account_tweets(handle)
        newer = tuple(
            record
            for record in tweets
            if since_tweet_id is None or record.tweet_id > since_tweet_id
        )
        yield TweetPage(
            tweets=newer,
            newest_id=newer[0].tweet_id if newer else None,
            oldest_id=newer[-1].tweet_id if newer else None,
            is_last=True,
        )

    def list_tweets(
        self, handle: str, since_tweet_id: int | None = None
    ) -> Iterator[TweetRecord]:
        for page in self.list_pages(handle, since_tweet_id):
            yield from page.tweets

    def _account_tweets(self, handle: str) -> list[TweetRecord]:
        handle_key = handle.lstrip("@").lower()
        tweets = [
            record
            for record in self.list_archives().tweets
            if record.handle.lower() == handle_key
        ]
        if not tweets:
            folders = ", ".join(str(path) for path in self.paths) or "(none)"
            raise AccountUnavailableError(
                f"no archived tweets of @{handle_key} in the archive folders "
                f"{folders}. Add its gallery-dl folder or X export to "
                "[archives] paths.",
                state=AccountState.NOT_FOUND,
            )
        return tweets
