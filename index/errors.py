"""Exceptions raised by the image library.

Every exception carries a short machine-readable ``code`` that the HTTP
layer maps to a status and returns beside the message. The message names
the value that failed and, where the caller can act, what to change.

::

    ImageLibraryError                  IMAGE_LIBRARY_ERROR
    └── ImageError                     IMAGE_ERROR
        ├── NotAnImageError            NOT_AN_IMAGE
        ├── UnsupportedImageError      UNSUPPORTED_IMAGE
        ├── ImageTooLargeError         IMAGE_TOO_LARGE
        └── CorruptImageError          CORRUPT_IMAGE
            └── TruncatedImageError    TRUNCATED_IMAGE

``ImageError`` and its subclasses describe a fault of the input bytes:
retrying the same bytes fails the same way.
"""

from __future__ import annotations


class ImageLibraryError(Exception):
    """Base class of every exception raised by the image library."""

    code = "IMAGE_LIBRARY_ERROR"


class ImageError(ImageLibraryError):
    """The input bytes cannot be turned into an image."""

    code = "IMAGE_ERROR"


class NotAnImageError(ImageError):
    """The bytes are no raster image: empty, an HTML page, JSON, XML, SVG."""

    code = "NOT_AN_IMAGE"


class UnsupportedImageError(ImageError):
    """The bytes are an image in a format or pixel mode the decoder lacks."""

    code = "UNSUPPORTED_IMAGE"


class ImageTooLargeError(ImageError):
    """The image exceeds a pixel or byte limit, checked before decoding."""

    code = "IMAGE_TOO_LARGE"


class CorruptImageError(ImageError):
    """The image data is damaged, so the decoder failed part way."""

    code = "CORRUPT_IMAGE"


class TruncatedImageError(CorruptImageError):
    """The image data ends before the decoder has every pixel."""

    code = "TRUNCATED_IMAGE"
