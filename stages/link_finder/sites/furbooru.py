"""Furbooru, a Philomena booru of furry art."""

from __future__ import annotations

import re

from .philomena import PhilomenaSite


class FurbooruSite(PhilomenaSite):
    """Image pages on furbooru.org: ``/images/{id}`` or ``/{id}``."""

    name = "furbooru"
    label = "Furbooru"
    host_pattern = re.compile(r"^(?:www\.)?furbooru\.org$")
    example_url = "https://furbooru.org/images/123456"
