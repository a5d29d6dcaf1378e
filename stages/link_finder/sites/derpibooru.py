"""Derpibooru, a Philomena booru of pony art."""

from __future__ import annotations

import re

from .philomena import PhilomenaSite


class DerpibooruSite(PhilomenaSite):
    """Image pages on derpibooru.org: ``/images/{id}`` or ``/{id}``."""

    name = "derpibooru"
    label = "Derpibooru"
    host_pattern = re.compile(r"^(?:www\.)?derpibooru\.org$")
    example_url = "https://derpibooru.org/images/3456789"
