"""Loopback fakes of the artwork sites and link-in-bio services.

``start_fake_sites()`` starts one small HTTP server per site family on
127.0.0.1 (OS-chosen ports) in background threads and returns a
``FakeSites`` holding their base URLs. ``add_artwork`` registers an
artwork with its artist, handles, image bytes and date, and returns the
artwork's URL on the real site host. A test parses that URL and fetches
from the fakes through ``sites_config()`` and ``link_in_bio_config()``.

Responses follow the documented shapes of each site, errors included:
Danbooru's error JSON, Philomena's two 404 bodies (empty on Derpibooru,
``{"error": "Not found"}`` on Furbooru), Pixiv's ``error: true``
envelope, DeviantArt's oEmbed 404. ``set_response`` replaces the response
of one path, and ``requests`` lists every request received.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import html
import io
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from broker.config import SitesConfig
from stages.link_finder.linkinbio import LinkInBioConfig

FAMILIES = ("danbooru", "derpibooru", "furbooru", "pixiv", "deviantart", "linkinbio")
SITE_HOSTS = {
    "danbooru": "https://danbooru.donmai.us/posts/{id}",
    "derpibooru": "https://derpibooru.org/images/{id}",
    "furbooru": "https://furbooru.org/images/{id}",
    "pixiv": "https://www.pixiv.net/en/artworks/{id}",
    "deviantart": "https://www.deviantart.com/{user}/art/Fake-Artwork-{id}",
}
LINK_IN_BIO_URLS = {
    "linktree": "https://linktr.ee/{name}",
    "litlink": "https://lit.link/en/{name}",
    "potofu": "https://potofu.me/{name}",
    "carrd": "https://{name}.carrd.co/",
    "biolink": "https://bio.link/{name}",
}


def make_png(seed: str, size: int = 64) -> bytes:
    """Return a small PNG whose colour depends on ``seed``."""
    digest = hashlib.sha256(seed.encode()).digest()
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), tuple(digest[:3])).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class FakeArtwork:
    """One artwork served by a fake site, and where its handles appear.

    Handles go where the site keeps them (artist URLs, profile fields,
    tag links). With ``link_in_bio`` set to a service name they appear
    only on that link-in-bio page, which the profile links to.
    ``artist_visible=False`` makes the artist missing or private.
    """

    site: str
    artwork_id: str
    artist: str
    handles: list[str]
    image: bytes
    published_at: float
    link_in_bio: str | None = None
    artist_visible: bool = True
    source: str = ""
    description: str = ""
    pages: int = 1

    @property
    def slug(self) -> str:
        return self.artist.lower().replace(" ", "-")

    @property
    def link_name(self) -> str:
        """The user name on link-in-bio services: letters and digits only."""
        return "".join(c for c in self.artist.lower() if c.isascii() and c.isalnum())

    @property
    def user_id(self) -> str:
        digest = hashlib.sha256(self.artist.encode()).hexdigest()
        return str(10_000_000 + int(digest[:6], 16))

    def date(self, offset_hours: int = 0, milliseconds: bool = False) -> str:
        zone = datetime.timezone(datetime.timedelta(hours=offset_hours))
        moment = datetime.datetime.fromtimestamp(self.published_at, zone)
        return moment.isoformat(timespec="milliseconds" if milliseconds else "seconds")


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(data: object, status: int = 200) -> _Answer:
    return _Answer(status, json.dumps(data, ensure_ascii=False).encode())


def _html(text: str, status: int = 200) -> _Answer:
    return _Answer(status, text.encode(), "text/html; charset=utf-8")


class FakeSites:
    """The running fake servers, their data and their request log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.artworks: dict[tuple[str, str], FakeArtwork] = {}
        self.link_pages: dict[tuple[str, str], list[str]] = {}
        self.overrides: dict[tuple[str, str], _Answer] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._servers: dict[str, ThreadingHTTPServer] = {}
        self.base_urls: dict[str, str] = {}
        for family in FAMILIES:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, family))
            server.daemon_threads = True
            thread = threading.Thread(
                target=server.serve_forever, name=f"fake-{family}", daemon=True
            )
            thread.start()
            self._servers[family] = server
            self.base_urls[family] = f"http://127.0.0.1:{server.server_address[1]}"

    def close(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()

    def sites_config(self) -> SitesConfig:
        names = [f.name for f in dataclasses.fields(SitesConfig)]
        return SitesConfig(**{name: self.base_urls[name] for name in names})

    def link_in_bio_config(self) -> LinkInBioConfig:
        base = self.base_urls["linkinbio"]
        return LinkInBioConfig(
            linktree=base + "/linktree/{name}",
            litlink=base + "/litlink/{name}",
            potofu=base + "/potofu/users/{name}",
            carrd=base + "/carrd/{domain}/{name}/",
            biolink=base + "/biolink/{name}",
        )

    def add_artwork(
        self,
        site: str,
        artwork_id: str,
        artist: str,
        handles: list[str],
        image: bytes | None = None,
        published_at: float = 1_717_245_296.0,
        **options,
    ) -> str:
        """Register an artwork and return its URL on the real site host."""
        artwork = FakeArtwork(
            site, str(artwork_id), artist, list(handles),
            image if image is not None else make_png(f"{site}:{artwork_id}"),
            published_at, **options,
        )  # fmt: skip
        with self._lock:
            self.artworks[(site, artwork.artwork_id)] = artwork
            if artwork.link_in_bio:
                links = [f"https://x.com/{handle}" for handle in handles]
                self.link_pages[(artwork.link_in_bio, artwork.link_name)] = links
        return SITE_HOSTS[site].format(id=artwork.artwork_id, user=artwork.slug)

    def add_link_page(self, service: str, name: str, links: list[str]) -> str:
        """Register a link-in-bio page and return its URL on the real host."""
        with self._lock:
            self.link_pages[(service, name)] = list(links)
        return LINK_IN_BIO_URLS[service].format(name=name)

    def set_response(
        self, family: str, path: str, status: int, body: bytes | str,
        content_type: str = "application/json",
    ) -> None:
        """Serve this body for ``path`` (without query) on one fake."""
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self.overrides[(family, path)] = _Answer(status, data, content_type)

    def paths_requested(self, family: str | None = None) -> list[str]:
        with self._lock:
            return [path for fam, path, _h in self.requests if family in (None, fam)]

    def find(self, site: str, artwork_id: str) -> FakeArtwork | None:
        with self._lock:
            return self.artworks.get((site, artwork_id))

    def by_user(self, site: str, predicate) -> FakeArtwork | None:
        """Return the first artwork of ``site`` whose artist matches ``predicate``."""
        with self._lock:
            artworks = [a for (s, _i), a in self.artworks.items() if s == site]
        matches = [artwork for artwork in artworks if predicate(artwork)]
        return matches[0] if matches else None

    def answer(self, family: str, path: str, query: dict, headers: dict) -> _Answer:
        with self._lock:
            self.requests.append((family, path, headers))
            override = self.overrides.get((family, path))
        if override is not None:
            return override
        route = _ROUTES[family]
        return route(self, family, path, query, headers)


def start_fake_sites() -> FakeSites:
    """Start every fake on 127.0.0.1 in background threads; ``close()`` stops them."""
    return FakeSites()


def _make_handler(fakes: FakeSites, family: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
            split = urllib.parse.urlsplit(self.path)
            query = {k: v[0] for k, v in urllib.parse.parse_qs(split.query).items()}
            answer = fakes.answer(family, split.path, query, dict(self.headers))
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format, *args) -> None:  # noqa: A002
            return

    return Handler


def _link_in_bio_url(artwork: FakeArtwork) -> str:
    return LINK_IN_BIO_URLS[artwork.link_in_bio].format(name=artwork.link_name)


def _quoted_x_url(handle: str) -> str:
    return urllib.parse.quote(f"https://x.com/{handle}", safe="")


def _image_answer(fakes: FakeSites, site: str, artwork_id: str) -> _Answer:
    artwork = fakes.find(site, artwork_id)
    if artwork is None:
        return _Answer(404, b"not found", "text/plain")
    return _Answer(200, artwork.image, "image/png")


# Danbooru ---------------------------------------------------------------

DANBOORU_NOT_FOUND = {
    "success": False,
    "error": "ActiveRecord::RecordNotFound",
    "message": "That record was not found.",
    "backtrace": [],
}


def _danbooru(fakes: FakeSites, family, path, query, headers) -> _Answer:
    base = fakes.base_urls[family]
    parts = [p for p in path.split("/") if p]
    if len(parts) == 2 and parts[0] == "posts" and parts[1].endswith(".json"):
        artwork = fakes.find("danbooru", parts[1][: -len(".json")])
        if artwork is None:
            return _json(DANBOORU_NOT_FOUND, 404)
        md5 = hashlib.md5(artwork.image).hexdigest()
        file_url = f"{base}/data/original/{artwork.artwork_id}.png"
        return _json({
            "id": int(artwork.artwork_id), "created_at": artwork.date(-4, True),
            "source": artwork.source, "md5": md5, "rating": "g",
            "tag_string_artist": artwork.artist.lower().replace(" ", "_"),
            "tag_string_meta": "highres", "file_ext": "png", "pixiv_id": None,
            "has_large": False, "file_url": file_url, "large_file_url": file_url,
            "media_asset": {"variants": [{"type": "original", "url": file_url}]},
        })
    if path == "/artists.json":
        name = query.get("search[name]", "")
        artwork = fakes.by_user(
            "danbooru", lambda a: a.artist.lower().replace(" ", "_") == name
        )
        if artwork is None or not artwork.artist_visible:
            return _json([])
        if artwork.link_in_bio:
            urls = [_link_in_bio_url(artwork)]
        else:
            urls = [f"https://x.com/{h}" for h in artwork.handles]
        entries = [{"url": u, "is_active": True} for u in urls]
        entries.append({"url": "https://x.com/i/user/1234567890", "is_active": True})
        return _json([{"id": 200001, "name": name, "is_deleted": False,
                       "is_banned": False, "urls": entries}])
    if len(parts) == 3 and parts[:2] == ["data", "original"]:
        return _image_answer(fakes, "danbooru", parts[2].split(".")[0])
    return _json(DANBOORU_NOT_FOUND, 404)


# Philomena (Derpibooru, Furbooru) ----------------------------------------


def _philomena(fakes: FakeSites, family, path, query, headers) -> _Answer:
    base = fakes.base_urls[family]
    parts = [p for p in path.split("/") if p]
    if parts[:4] == ["api", "v1", "json", "images"] and len(parts) == 5:
        artwork = fakes.find(family, parts[4])
        if artwork is None:
            if family == "derpibooru":
                return _Answer(404, b"", "text/plain")
            return _json({"error": "Not found"}, 404)
        full = f"{base}/img/view/{artwork.artwork_id}.png"
        return _json({"image": {
            "id": int(artwork.artwork_id),
            "created_at": artwork.date(0).replace("+00:00", "Z"),
            "tags": [f"artist:{artwork.artist.lower()}", "safe", "solo"],
            "description": artwork.description, "source_url": artwork.source,
            "source_urls": [artwork.source] if artwork.source else [],
            "representations": {"full": full, "large": full, "thumb": full},
            "duplicate_of": None, "hidden_from_users": False, "deletion_reason": None,
        }, "interactions": []})
    if path == "/search":
        tag = query.get("q", "")
        artwork = fakes.by_user(family, lambda a: f"artist:{a.artist.lower()}" == tag)
        links = ""
        if artwork is not None and artwork.artist_visible:
            if artwork.link_in_bio:
                uris = [_link_in_bio_url(artwork)]
            else:
                uris = [f"https://twitter.com/{h}" for h in artwork.handles]
            anchors = " ".join(
                f'<a href="{html.escape(u)}">{html.escape(u)}</a>' for u in uris
            )
            links = f"<strong>Associated links:</strong> {anchors}"
        return _html(
            f'<html><body><nav><a href="https://twitter.com/{family}">us</a></nav>'
            f'<main id="content"><div class="tag-info">{links}</div>'
            f'<a href="/images/1">an image</a></main></body></html>'
        )
    if parts[:2] == ["img", "view"] and len(parts) == 3:
        return _image_answer(fakes, family, parts[2].split(".")[0])
    return _Answer(404, b"", "text/plain")


# Pixiv ------------------------------------------------------------------


def _pixiv_error(message: str) -> _Answer:
    return _json({"error": True, "message": message, "body": []}, 404)


def _pixiv(fakes: FakeSites, family, path, query, headers) -> _Answer:
    base = fakes.base_urls[family]
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["ajax", "illust"] and len(parts) in (3, 4):
        artwork = fakes.find("pixiv", parts[2])
        if artwork is None:
            return _pixiv_error("Work has been deleted or the ID does not exist.")
        page_urls = [{"original": f"{base}/img-original/{artwork.artwork_id}_p{n}.png",
                      "regular": f"{base}/img-master/{artwork.artwork_id}_p{n}.jpg"}
                     for n in range(artwork.pages)]
        if len(parts) == 4 and parts[3] == "pages":
            return _json({"error": False, "message": "",
                          "body": [{"urls": urls} for urls in page_urls]})
        return _json({"error": False, "message": "", "body": {
            "illustId": artwork.artwork_id, "illustComment": artwork.description,
            "createDate": artwork.date(0), "urls": page_urls[0],
            "userId": artwork.user_id, "userName": artwork.artist,
            "userAccount": artwork.slug, "pageCount": artwork.pages,
        }})
    if parts[:2] == ["ajax", "user"] and len(parts) == 3:
        artwork = fakes.by_user("pixiv", lambda a: a.user_id == parts[2])
        if artwork is None or not artwork.artist_visible:
            return _pixiv_error("User has left pixiv or the user ID does not exist.")
        social: object = []
        comment_html = ""
        webpage = None
        if artwork.link_in_bio:
            webpage = _link_in_bio_url(artwork)
        elif artwork.handles:
            social = {"twitter": {"url": f"https://twitter.com/{artwork.handles[0]}"}}
            comment_html = " ".join(
                f'<a href="/jump.php?{_quoted_x_url(h)}">x.com/{h}</a>'
                for h in artwork.handles[1:]
            )
        return _json({"error": False, "message": "", "body": {
            "userId": artwork.user_id, "name": artwork.artist, "comment": "",
            "commentHtml": comment_html, "webpage": webpage, "social": social,
        }})
    if parts and parts[0] in ("img-original", "img-master"):
        referer_host = urllib.parse.urlsplit(headers.get("Referer", "")).hostname or ""
        from_fake = headers.get("Referer", "").startswith(base)
        if not (referer_host.endswith("pixiv.net") or from_fake):
            return _Answer(403, b"Forbidden", "text/html")
        return _image_answer(fakes, "pixiv", parts[-1].split("_")[0])
    return _pixiv_error("Not found")


# DeviantArt -------------------------------------------------------------


def _deviantart(fakes: FakeSites, family, path, query, headers) -> _Answer:
    base = fakes.base_urls[family]
    parts = [p for p in path.split("/") if p]
    if path == "/oembed":
        target = urllib.parse.urlsplit(query.get("url", ""))
        name = target.path.strip("/")
        artwork = None
        if target.hostname == "fav.me" and name.startswith("d"):
            artwork = fakes.find("deviantart", str(int(name[1:], 36)))
        if artwork is None:
            return _Answer(404, b"404 Not Found", "text/html")
        return _json({
            "version": "1.0", "type": "photo", "title": "Fake Artwork",
            "url": f"{base}/wixmp/{artwork.artwork_id}.png?token=FAKE",
            "author_name": artwork.artist,
            "author_url": f"https://www.deviantart.com/{artwork.slug}",
            "pubdate": artwork.date(-7), "width": "64", "height": "64",
        })
    if len(parts) == 2 and parts[1] == "about":
        artwork = fakes.by_user("deviantart", lambda a: a.slug == parts[0].lower())
        if artwork is None or not artwork.artist_visible:
            return _html("<html><body>Not found</body></html>", 404)
        return _html(_deviantart_profile(artwork))
    if parts[:1] == ["wixmp"] and len(parts) == 2:
        return _image_answer(fakes, "deviantart", parts[1].split(".")[0])
    return _html("<html><body>Not found</body></html>", 404)


def _deviantart_profile(artwork: FakeArtwork) -> str:
    about: dict = {
        "username": artwork.artist,
        "twitterUsername": None,
        "website": "",
        "socialLinks": [],
        "textContent": {"html": {"type": "writer", "markup": ""}},
    }
    if artwork.link_in_bio:
        about["website"] = _link_in_bio_url(artwork)
    elif artwork.handles:
        about["twitterUsername"] = artwork.handles[0]
        about["socialLinks"] = [{"value": f"https://x.com/{h}", "type": "twitter"}
                                for h in artwork.handles[1:]]
    friend = '<a href="https://www.deviantart.com/some-friend">a friend</a>'
    about["textContent"]["html"]["markup"] = f"<p>Commissions open. {friend}</p>"
    state = {"@@gruser": {"grusers": {"1": {"modules": {
        "7": {"name": "about", "moduleData": {"about": about}},
    }}}}, "@@publicSession": {}}
    literal = json.dumps(json.dumps(state))[1:-1]
    return (f"<html><head><script>window.__INITIAL_STATE__ = JSON.parse(\"{literal}\");"
            "</script></head><body></body></html>")


# Link-in-bio services -----------------------------------------------------


def _linkinbio(fakes: FakeSites, family, path, query, headers) -> _Answer:
    parts = [p for p in path.split("/") if p]
    if not parts:
        return _html("<html><title>Not Found</title></html>", 404)
    service = parts[0]
    name = parts[-1]
    with fakes._lock:
        links = fakes.link_pages.get((service, name))
    if links is None:
        return _html("<html><head><title>Not Found</title></head></html>", 404)
    if service == "linktree":
        account = {"id": 1, "username": name,
                   "links": [{"id": i, "type": "CLASSIC", "url": u}
                             for i, u in enumerate(links)],
                   "socialLinks": []}
        return _html(_next_data_page({"props": {"pageProps": {"account": account}}}))
    if service == "litlink":
        profile = {"name": name, "snsIconLinks": [{"url": u} for u in links[:1]],
                   "profileLinks": [{"profileLinkType": "button",
                                     "buttonLink": {"url": u, "urlType": "url"}}
                                    for u in links[1:]]}
        return _html(_next_data_page({"props": {"pageProps": {"profile": profile}}}))
    if service == "potofu":
        return _json({"user": {"name": name, "links": [{"url": u} for u in links]}})
    anchors = "".join(f'<li><a href="{html.escape(u)}">link</a></li>' for u in links)
    return _html(f"<html><body><ul>{anchors}</ul></body></html>")


def _next_data_page(data: dict) -> str:
    payload = json.dumps(data).replace("</", "<\\/")
    return ('<html><body><script id="__NEXT_DATA__" type="application/json">'
            f"{payload}</script></body></html>")


_ROUTES = {
    "danbooru": _danbooru,
    "derpibooru": _philomena,
    "furbooru": _philomena,
    "pixiv": _pixiv,
    "deviantart": _deviantart,
    "linkinbio": _linkinbio,
}
