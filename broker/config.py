"""Configuration shared by every process, read once from ``config.toml``.

Each TOML table maps to one frozen dataclass below. Keys missing from the
file keep their defaults, unknown tables or keys are an error that names
them, and environment variables named ``A2T_<TABLE>_<KEY>`` override the
file (values are parsed as TOML, so ``A2T_HTTP_PORT=3302`` is an int and
``A2T_ARCHIVES_PATHS='["a", "b"]'`` a list).

Relative paths in ``[data] folder`` are resolved against the folder of the
configuration file, so every process of one deployment uses the same data.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "config.toml"
ENV_CONFIG_PATH = "A2T_CONFIG"


class ConfigError(ValueError):
    """The configuration file or an override is invalid."""


@dataclass(frozen=True)
class DataConfig:
    folder: str = "data"


@dataclass(frozen=True)
class BrokerConfig:
    endpoint: str = "tcp://127.0.0.1:5555"
    heartbeat_interval_secs: float = 1.0
    heartbeat_liveness: int = 3
    max_redeliveries: int = 1
    request_timeout_secs: float = 120.0


@dataclass(frozen=True)
class StagesConfig:
    indexers: int = 2
    # Each searcher process keeps its own copy of the FAISS index in memory.
    searchers: int = 1
    ingest_window: int = 16


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 3301
    threads: int = 16
    max_upload_bytes: int = 20 * 1024 * 1024
    max_url_chars: int = 256
    min_request_interval_secs: float = 1.0
    max_requests_in_flight_per_ip: int = 10
    unlimited_ip_addresses: tuple[str, ...] = ("127.0.0.1",)
    advanced_ip_addresses: tuple[str, ...] = ("127.0.0.1",)
    trust_forwarded_for: bool = False


@dataclass(frozen=True)
class ImagesConfig:
    max_pixels: int = 64_000_000
    max_bytes: int = 50 * 1024 * 1024


@dataclass(frozen=True)
class RequestsConfig:
    keep_finished_secs: float = 3 * 3600
    keep_failed_secs: float = 3600
    keep_input_error_secs: float = 600


@dataclass(frozen=True)
class ArchivesConfig:
    paths: tuple[str, ...] = ()
    # Seconds between two ingests of the folders above (0: only at start).
    rescan_secs: float = 3600.0


@dataclass(frozen=True)
class NetworkConfig:
    """Outbound HTTP client settings (pages, link-in-bio, images)."""

    timeout_secs: float = 15.0
    max_response_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 5
    user_agent: str = "art2tweet/0.1"
    # Tests set this to reach their loopback fakes; production never does.
    allow_private_addresses: bool = False


@dataclass(frozen=True)
class SitesConfig:
    """Base URLs of the artwork sites; tests point them at loopback fakes."""

    danbooru: str = "https://danbooru.donmai.us"
    derpibooru: str = "https://derpibooru.org"
    furbooru: str = "https://furbooru.org"
    pixiv: str = "https://www.pixiv.net"
    deviantart: str = "https://www.deviantart.com"


@dataclass(frozen=True)
class LinkInBioConfig:
    """URL templates of link-in-bio pages; ``{name}`` is the page's user name.

    For carrd, ``{domain}`` is carrd.co, crd.co or uwu.ai. Tests point these
    at loopback fakes.
    """

    linktree: str = "https://linktr.ee/{name}"
    litlink: str = "https://lit.link/{name}"
    potofu: str = "https://api.potofu.me/users/{name}"
    carrd: str = "https://{name}.{domain}/"
    biolink: str = "https://bio.link/{name}"


@dataclass(frozen=True)
class XApiConfig:
    """X API v2 access; the bearer token is read from this environment variable."""

    base_url: str = "https://api.x.com"
    bearer_token_env: str = "A2T_X_BEARER_TOKEN"
    bearer_token: str = ""


@dataclass(frozen=True)
class ScansConfig:
    """Account scans: which tweet source lists accounts found by queries."""

    backend: str = "archive"
    update_every_days: float = 7.0
    keep_finished_secs: float = 24 * 3600


@dataclass(frozen=True)
class MatchingConfig:
    """Reverse-search settings used by the searcher stage."""

    max_pdq_distance: int = 31
    min_pdq_quality: int = 50
    shortlist_size: int = 8


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    requests: RequestsConfig = field(default_factory=RequestsConfig)
    archives: ArchivesConfig = field(default_factory=ArchivesConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    sites: SitesConfig = field(default_factory=SitesConfig)
    link_in_bio: LinkInBioConfig = field(default_factory=LinkInBioConfig)
    x_api: XApiConfig = field(default_factory=XApiConfig)
    scans: ScansConfig = field(default_factory=ScansConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    # Folder the relative paths of this configuration are resolved against.
    base_folder: str = str(PROJECT_ROOT)

    @property
    def data_folder(self) -> Path:
        folder = Path(self.data.folder)
        if not folder.is_absolute():
            folder = Path(self.base_folder) / folder
        return folder

    @property
    def database_path(self) -> Path:
        return self.data_folder / "art2tweet.sqlite3"

    @property
    def log_folder(self) -> Path:
        return self.data_folder / "logs"


def _coerce(value: object, annotation: str, where: str) -> object:
    """Check a TOML value against a field's annotation and convert lists."""
    if annotation.startswith("tuple"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
        return tuple(value)
    expected = {"str": str, "int": int, "float": (int, float), "bool": bool}[annotation]
    if isinstance(value, bool) and annotation != "bool":
        raise ConfigError(f"{where} must be {annotation}, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{where} must be {annotation}, got {value!r}")
    return float(value) if annotation == "float" else value


def _build_section(cls: type, table: dict, name: str) -> object:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [{name}]: {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    values = {}
    for key, value in table.items():
        values[key] = _coerce(value, fields[key].type, f"[{name}] {key}")
    return cls(**values)


def _apply_environment(tables: dict, environ: typing.Mapping[str, str]) -> None:
    sections = {f.name for f in dataclasses.fields(Config) if f.name != "base_folder"}
    for variable, text in environ.items():
        if not variable.startswith("A2T_") or variable == ENV_CONFIG_PATH:
            continue
        rest = variable[4:].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            continue
        key = rest[len(section) + 1 :]
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # A bare word is taken as a string.
        tables.setdefault(section, {})[key] = value


def load_config(
    path: str | os.PathLike | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Config:
    """Read the configuration file, apply environment overrides, validate.

    ``path`` defaults to ``$A2T_CONFIG`` or the project's ``config.toml``.
    Raises ConfigError naming the file and the bad table or key.
    """
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get(ENV_CONFIG_PATH) or DEFAULT_CONFIG_PATH).resolve()
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"configuration file not found: {path}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"invalid TOML in {path}: {error}") from error
    _apply_environment(tables, environ)

    sections = {
        f.name: f for f in dataclasses.fields(Config) if f.name != "base_folder"
    }
    unknown = sorted(set(tables) - set(sections))
    if unknown:
        raise ConfigError(
            f"unknown table(s) in {path}: {', '.join(unknown)}; "
            f"known tables: {', '.join(sorted(sections))}"
        )
    built = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{name} in {path} must be a table like [{name}]")
        section_type = typing.get_type_hints(Config)[name]
        built[name] = _build_section(section_type, table, name)
    return Config(**built, base_folder=str(path.parent))


def config_to_toml_dict(config: Config) -> dict:
    """Return the configuration as plain data, for ``/config`` and logs.

    Secrets (the X bearer token) are replaced by a marker.
    """
    data = dataclasses.asdict(config)
    if data["x_api"]["bearer_token"]:
        data["x_api"]["bearer_token"] = "(set)"
    return data
