"""Tests for the archive source on the demo corpus and damaged copies of it."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from broker.config import ArchivesConfig, Config
from stages.sources import SOURCES, create_source
from stages.sources.archive import ArchiveSource, list_archive
from stages.sources.base import AccountState, AccountUnavailableError, SourceError

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
DEMO = CORPUS / "demo"
GALLERY_DL = DEMO / "gallery-dl" / "twitter"
X_EXPORT = DEMO / "x-archive" / "kestrel_inks"

pytestmark = pytest.mark.skipif(not DEMO.is_dir(), reason="demo corpus not found")


def demo_files() -> dict[int, set[str]]:
    """Map each demo tweet id to its image paths, read from file names only."""
    files: dict[int, set[str]] = {}
    for path in GALLERY_DL.glob("*/*"):
        match = re.fullmatch(r"(\d+)_\d+\.(jpg|png)", path.name)
        if match:
            files.setdefault(int(match.group(1)), set()).add(str(path))
    for path in (X_EXPORT / "data" / "tweets_media").iterdir():
        tweet_id = int(path.name.split("-", 1)[0])
        files.setdefault(tweet_id, set()).add(str(path))
    return files


def by_id(listing) -> dict:
    return {record.tweet_id: record for record in listing.tweets}


def copy_handle_folder(tmp_path: Path, handle: str = "mizuiro_brush") -> Path:
    target = tmp_path / "gallery-dl" / "twitter" / handle
    shutil.copytree(GALLERY_DL / handle, target)
    return target


def copy_export(tmp_path: Path, name: str = "kestrel_inks") -> Path:
    target = tmp_path / name
    shutil.copytree(X_EXPORT, target)
    return target


def test_demo_lists_every_tweet_and_file():
    listing = list_archive(DEMO)
    expected = demo_files()

    assert listing.problems == []
    assert sorted(by_id(listing)) == sorted(expected)
    for record in listing.tweets:
        locations = {image.location for image in record.images}
        assert locations == expected[record.tweet_id], record.tweet_id
        assert all(image.is_file for image in record.images)


def test_demo_newest_first():
    ids = [record.tweet_id for record in list_archive(DEMO).tweets]

    assert ids == sorted(ids, reverse=True)


def test_demo_account_ids():
    listing = list_archive(DEMO)
    account_js = (X_EXPORT / "data" / "account.js").read_text(encoding="utf-8")
    account = json.loads(account_js.partition("=")[2])[0]["account"]
    kestrel_id = int(account["accountId"])
    sidecar = next((GALLERY_DL / "mizuiro_brush").glob("*.json"))
    mizuiro_id = json.loads(sidecar.read_text(encoding="utf-8"))["user"]["id"]

    accounts = {(record.handle, record.account_id) for record in listing.tweets}

    assert ("kestrel_inks", kestrel_id) in accounts
    assert ("mizuiro_brush", mizuiro_id) in accounts
    assert len({handle for handle, _ in accounts}) == len(accounts)


def test_manifest_positions():
    listing = by_id(list_archive(DEMO))
    with open(DEMO / "queries" / "manifest.csv", encoding="utf-8") as stream:
        rows = [row for row in csv.DictReader(stream) if row["tweet_id"]]
    assert rows

    for row in rows:
        record = listing[int(row["tweet_id"])]
        position = int(row["image_position"])
        images = {image.position: image.location for image in record.images}
        location = Path(images[position])
        assert record.handle == row["handle"]
        assert 1 <= position <= record.image_count
        if location.is_relative_to(GALLERY_DL):
            assert location.name.startswith(f"{row['tweet_id']}_{position}.")
        else:
            assert location.name.startswith(f"{row['tweet_id']}-")


def test_x_export_positions_follow_media_order():
    tweets_js = (X_EXPORT / "data" / "tweets.js").read_text(encoding="utf-8")
    entries = json.loads(tweets_js.partition("=")[2])
    listing = by_id(list_archive(X_EXPORT))

    for entry in entries:
        tweet = entry["tweet"]
        media = tweet["extended_entities"]["media"]
        record = listing[int(tweet["id_str"])]
        assert record.image_count == len(media)
        for image in record.images:
            media_name = media[image.position - 1]["media_url_https"].rsplit("/", 1)[1]
            assert Path(image.location).name == f"{tweet['id_str']}-{media_name}"


def test_path_forms_list_same_tweets(tmp_path):
    handle_folder = GALLERY_DL / "mizuiro_brush"
    expected = sorted(by_id(list_archive(handle_folder)))

    assert sorted(by_id(list_archive(GALLERY_DL))) != expected
    assert set(expected) <= set(by_id(list_archive(GALLERY_DL)))
    assert set(expected) <= set(by_id(list_archive(GALLERY_DL.parent)))
    assert sorted(by_id(list_archive(X_EXPORT / "data"))) == sorted(
        by_id(list_archive(X_EXPORT))
    )


def test_broken_sidecar_reported(tmp_path):
    folder = copy_handle_folder(tmp_path)
    sidecar = sorted(folder.glob("*.json"))[0]
    sidecar.write_text('{"tweet_id": 12', encoding="utf-8")
    image = folder / sidecar.name.removesuffix(".json")
    tweet_id = int(image.name.split("_")[0])

    listing = list_archive(tmp_path)

    assert [path for path, _ in listing.problems] == [str(sidecar)]
    assert "invalid JSON" in listing.problems[0][1]
    record = by_id(listing).get(tweet_id)
    listed = {i.location for i in record.images} if record else set()
    assert str(image) not in listed
    assert len(listing.tweets) >= 18


def test_image_without_sidecar_reported(tmp_path):
    folder = copy_handle_folder(tmp_path)
    image = folder / "1370392369018437647_2.jpg"
    Path(f"{image}.json").unlink()

    listing = list_archive(folder)

    assert listing.problems == [(str(image), listing.problems[0][1])]
    assert "no metadata" in listing.problems[0][1]
    record = by_id(listing)[1370392369018437647]
    assert [i.position for i in record.images] == [1, 3, 4]
    assert record.image_count == 4


def test_missing_image_keeps_count(tmp_path):
    folder = copy_handle_folder(tmp_path)
    (folder / "1370392369018437647_3.png").unlink()

    listing = list_archive(folder)

    record = by_id(listing)[1370392369018437647]
    assert listing.problems == []
    assert [i.position for i in record.images] == [1, 2, 4]
    assert record.image_count == 4


def write_sidecar(path: Path, template: Path, **changes) -> None:
    metadata = json.loads(template.read_text(encoding="utf-8"))
    metadata.update(changes)
    Path(f"{path}.json").write_text(json.dumps(metadata), encoding="utf-8")


def test_video_entries_skipped(tmp_path):
    folder = copy_handle_folder(tmp_path)
    template = folder / "1370392369018437647_1.jpg.json"
    photo = folder / "1400000000000000001_1.jpg"
    video = folder / "1400000000000000001_2.mp4"
    shutil.copy(folder / "1370392369018437647_1.jpg", photo)
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    write_sidecar(photo, template, tweet_id=1400000000000000001, num=1, count=2)
    write_sidecar(
        video, template, tweet_id=1400000000000000001, num=2, count=2,
        type="video", extension="mp4",
    )
    only_video = folder / "1400000000000000002_1.mp4"
    only_video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    write_sidecar(
        only_video, template, tweet_id=1400000000000000002, num=1, count=1,
        type="animated_gif", extension="mp4",
    )

    listing = by_id(list_archive(folder))

    record = listing[1400000000000000001]
    assert [image.location for image in record.images] == [str(photo)]
    assert record.image_count == 2
    assert 1400000000000000002 not in listing


def test_retweet_media_skipped(tmp_path):
    folder = copy_handle_folder(tmp_path)
    template = folder / "1370392369018437647_1.jpg.json"
    retweet = folder / "1400000000000000003_1.jpg"
    shutil.copy(folder / "1370392369018437647_1.jpg", retweet)
    author = {"id": 3100000000, "name": "someone_else", "nick": "Other"}
    write_sidecar(
        retweet, template, tweet_id=1400000000000000003, num=1, count=1,
        retweet_id=1400000000000000004, author=author,
    )

    listing = list_archive(folder)

    assert 1400000000000000003 not in by_id(listing)
    assert listing.problems == []


def test_truncated_tweets_js(tmp_path):
    export = copy_export(tmp_path)
    tweets_js = export / "data" / "tweets.js"
    text = tweets_js.read_text(encoding="utf-8")
    tweets_js.write_text(text[: len(text) // 2], encoding="utf-8")
    media_count = len(list((export / "data" / "tweets_media").iterdir()))

    listing = list_archive(tmp_path)

    reasons = dict(listing.problems)
    assert listing.tweets == []
    assert "truncated" in reasons[str(tweets_js)]
    orphans = [reason for reason in reasons.values() if reason.startswith("orphan")]
    assert len(orphans) == media_count


def test_split_old_export(tmp_path):
    top = tmp_path / "twitter-2021-05-01-abc" / "extra"
    shutil.copytree(X_EXPORT, top)
    data = top / "data"
    (data / "tweets_media").rename(data / "tweet_media")
    text = (data / "tweets.js").read_text(encoding="utf-8")
    entries = json.loads(text.partition("=")[2])
    half = len(entries) // 2
    (data / "tweets.js").unlink()
    (data / "tweet.js").write_text(
        "window.YTD.tweet.part0 = " + json.dumps([e["tweet"] for e in entries[:half]]),
        encoding="utf-8",
    )
    (data / "tweet-part1.js").write_text(
        "window.YTD.tweet.part1 = " + json.dumps(entries[half:]) + ";",
        encoding="utf-8",
    )
    second = copy_export(tmp_path, "another_export")
    account_js = second / "data" / "account.js"
    account_js.write_text(
        account_js.read_text(encoding="utf-8").replace("2900000002", "2900000009"),
        encoding="utf-8",
    )

    listing = list_archive(tmp_path)

    expected = sorted(by_id(list_archive(X_EXPORT)))
    assert listing.problems == []
    assert sorted(by_id(listing)) == expected
    assert sum(len(record.images) for record in listing.tweets) == 29


def test_x_export_without_account(tmp_path):
    export = copy_export(tmp_path)
    account_js = export / "data" / "account.js"
    account_js.unlink()

    listing = list_archive(export)

    assert listing.tweets == []
    assert [path for path, _ in listing.problems] == [str(account_js)]


def test_x_export_retweet_skipped(tmp_path):
    export = copy_export(tmp_path)
    tweets_js = export / "data" / "tweets.js"
    entries = json.loads(tweets_js.read_text(encoding="utf-8").partition("=")[2])
    retweet = entries[0]["tweet"]
    retweet["full_text"] = "RT @someone_else: " + retweet["full_text"]
    tweets_js.write_text("window.YTD.tweets.part0 = " + json.dumps(entries))

    listing = by_id(list_archive(export))

    assert int(retweet["id_str"]) not in listing
    assert len(listing) == len(entries) - 1


def test_data_jsonl_and_info_json(tmp_path):
    source = GALLERY_DL / "mizuiro_brush"
    jsonl_folder = tmp_path / "jsonl" / "twitter" / "mizuiro_brush"
    info_folder = tmp_path / "info" / "twitter" / "mizuiro_brush"
    jsonl_folder.mkdir(parents=True)
    info_folder.mkdir(parents=True)
    lines = []
    for image in sorted(source.glob("*_*.*")):
        if image.suffix == ".json":
            continue
        shutil.copy(image, jsonl_folder / image.name)
        shutil.copy(image, info_folder / image.name)
        lines.append(Path(f"{image}.json").read_text(encoding="utf-8"))
    jsonl_lines = [json.dumps(json.loads(line)) for line in lines]
    (jsonl_folder / "data.jsonl").write_text("\n".join(jsonl_lines) + "\n")
    shutil.copy(Path(f"{sorted(source.glob('*.json'))[0]}"), info_folder / "info.json")

    expected = by_id(list_archive(source))
    from_jsonl = by_id(list_archive(jsonl_folder))
    from_info = by_id(list_archive(info_folder))

    assert sorted(from_jsonl) == sorted(expected)
    assert sorted(from_info) == sorted(expected)
    for tweet_id, record in expected.items():
        assert from_jsonl[tweet_id].image_count == record.image_count
        assert from_info[tweet_id].account_id == record.account_id
        positions = [image.position for image in record.images]
        assert [i.position for i in from_info[tweet_id].images] == positions


def test_missing_folder_reported(tmp_path):
    listing = list_archive(tmp_path / "absent")

    assert listing.tweets == []
    assert listing.problems[0][0] == str(tmp_path / "absent")


def test_source_lists_one_account():
    source = ArchiveSource([DEMO])

    tweets = list(source.list_tweets("Kestrel_Inks"))
    newer = list(source.list_tweets("kestrel_inks", since_tweet_id=tweets[5].tweet_id))

    assert len(tweets) == 17
    assert {record.handle for record in tweets} == {"kestrel_inks"}
    assert newer == tweets[:5]
    assert source.lookup_account("@kestrel_inks").account_id == 2900000002


def test_source_page_cursor():
    source = ArchiveSource([DEMO])

    pages = list(source.list_pages("mizuiro_brush"))

    assert len(pages) == 1
    assert pages[0].is_last
    assert pages[0].newest_id == pages[0].tweets[0].tweet_id


def test_source_unknown_account():
    source = ArchiveSource([DEMO])

    with pytest.raises(AccountUnavailableError) as caught:
        list(source.list_tweets("nobody_here"))

    assert caught.value.state is AccountState.NOT_FOUND
    assert "nobody_here" in str(caught.value)


def test_registry_builds_archive_source():
    config = Config(archives=ArchivesConfig(paths=(str(DEMO),)))

    source = create_source(config)

    assert isinstance(source, ArchiveSource)
    assert sorted(SOURCES) == ["archive", "snscrape", "x_api"]
    assert all(cls.name == name for name, cls in SOURCES.items())


def test_registry_unknown_name():
    with pytest.raises(SourceError) as caught:
        create_source(Config(), "nitter")

    assert "nitter" in str(caught.value)
