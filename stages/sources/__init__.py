"""Tweet sources, registered by the name ``[scans] backend`` selects.

Each source class has a ``name`` equal to its key below and a
``from_config(config)`` constructor.
"""

from __future__ import annotations

from broker.config import Config
from stages.sources.archive import ArchiveSource
from stages.sources.base import SourceError, TweetSource
from stages.sources.snscrape_source import SnscrapeSource
from stages.sources.x_api import XApiSource

SOURCES: dict[str, type] = {
    ArchiveSource.name: ArchiveSource,
    SnscrapeSource.name: SnscrapeSource,
    XApiSource.name: XApiSource,
}


def create_source(config: Config, name: str | None = None) -> TweetSource:
    """Build the source named ``name``, by default ``[scans] backend``.

    Raises SourceError for an unknown name or a source that cannot start,
    such as the X API without a bearer token.
    """
    name = name or config.scans.backend
    try:
        source_class = SOURCES[name]
    except KeyError:
        known = ", ".join(sorted(SOURCES))
        raise SourceError(
            f"unknown tweet source {name!r} in [scans] backend; known: {known}"
        ) from None
    return source_class.from_config(config)
