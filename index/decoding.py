"""Decoding of image bytes into 8-bit RGB images for every part of the service.

``decode_image`` and ``decode_file`` are the one way the indexers, the
searcher and the benchmarks turn bytes into pixels, so one image always
gives the same pixels whichever part decodes it. The steps:

1. The format is sniffed from the magic bytes, never from a file name.
   Anything else (empty data, HTML, JSON, XML, SVG) raises
   ``NotAnImageError`` naming what the data looks like.
2. The width and height are read from the header and checked against the
   pixel limit before Pillow allocates any pixel memory.
3. Pillow decodes only the sniffed format. Data that ends before the
   decoder has every pixel raises ``TruncatedImageError``. The check does
   not read Pillow's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` flag,
   so it gives the same result whatever another module sets there.
4. The EXIF orientation is applied, and the pixels are converted to 8-bit
   RGB: transparency is composited onto white, 16-bit and float samples
   are scaled from their real range, CMYK and other modes are converted.
   Animated images give their first frame.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import struct
import zlib

import numpy as np
from PIL import Image, ImageChops, ImageOps

from index.errors import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedImageError,
)

logger = logging.getLogger(__name__)

# Pillow format ids tried for each sniffed format. Formats missing here are
# recognised images that this build cannot decode.
PILLOW_FORMATS = {
    "avif": ("AVIF",),
    "bmp": ("BMP",),
    "gif": ("GIF",),
    "jp2": ("JPEG2000",),
    "jpeg": ("JPEG",),
    "png": ("PNG",),
    "tiff": ("TIFF",),
    "webp": ("WEBP",),
}

WHITE_RGBA = (255, 255, 255, 255)

# Exceptions Pillow raises on damaged data, depending on the plugin.
_PILLOW_DATA_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error
)

_JPEG_EOI = b"\xff\xd9"
_JPEG2000_EOC = b"\xff\xd9"
# Non-marker bytes placed before an appended EOI marker. A leading 0x00
# stuffs a trailing 0xFF of the data, and no byte is 0xFF, so the filler
# forms no marker. Decoded as entropy data, the varied bits give non-zero
# coefficients, unlike the zero blocks libjpeg fills in when a scan stops.
_JPEG_SCAN_FILLER = b"\x00" + bytes((i * 73 + 41) % 255 for i in range(4096))

# Formats whose complete files still make Pillow read past the end: a PNG
# without IEND (its chunks are checked before decoding instead), and
# JPEG 2000, whose decoder reads the whole stream and fails when cut.
_READ_PAST_END_WHEN_COMPLETE = frozenset({"png", "jp2"})

_JPEG_DRAFT_SCALES = (8, 4, 2)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
_PREMULTIPLIED_MODES = {"La": "LA", "RGBa": "RGBA"}


def decode_image(
    data: bytes, max_pixels: int, *, reduce_to: int | None = None
) -> Image.Image:
    """Decode image bytes into a fully loaded 8-bit RGB image.

    ``max_pixels`` is the largest accepted width x height, checked from the
    header before decoding. Pillow's own ``Image.MAX_IMAGE_PIXELS`` also
    applies when it is lower, so Pillow's decompression bomb warning and
    error never fire on an accepted image.

    ``reduce_to`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale through
    libjpeg's DCT scaling, which is several times faster on large photos.
    The returned long side is then at least ``reduce_to``, or the full size
    when the image is smaller. The result may be up to twice as large as
    ``reduce_to``, so callers still resize to their own size. Other formats
    ignore ``reduce_to`` and decode at full size.

    Raises ``NotAnImageError``, ``UnsupportedImageError``,
    ``ImageTooLargeError``, ``TruncatedImageError`` or
    ``CorruptImageError``, each with a message naming the problem.
    """
    _check_arguments(max_pixels, reduce_to)
    image_format = _require_image_format(data)
    _require_supported(image_format)
    width, height = _read_header_dimensions(data, image_format)
    _check_pixel_count(width, height, max_pixels)
    _check_container(data, image_format)

    if image_format == "jpeg":
        image = _load_jpeg(data, max_pixels, reduce_to)
    else:
        image = _load_other(data, image_format, max_pixels)

    _apply_exif_orientation(image)
    return _convert_to_rgb(image)


def decode_file(
    path: str | os.PathLike[str],
    max_pixels: int,
    *,
    max_bytes: int | None = None,
    reduce_to: int | None = None,
) -> Image.Image:
    """Read and decode an image file like ``decode_image``.

    A file larger than ``max_bytes`` raises ``ImageTooLargeError`` before
    it is read. Image errors name the path. ``OSError`` from opening or
    reading the file (missing file, no permission) propagates unchanged.
    """
    data = _read_file(path, max_bytes)
    try:
        return decode_image(data, max_pixels, reduce_to=reduce_to)
    except ImageError as exc:
        raise type(exc)(f"{os.fspath(path)}: {exc}") from exc


def sniff_format(data: bytes) -> str | None:
    """Return the image format named by the magic bytes, or None.

    The names are "jpeg", "png", "gif", "webp", "bmp", "tiff", "avif",
    "heic", "jxl" and "jp2". A recognised format may still be one that
    ``decode_image`` cannot decode (HEIC and JPEG XL in this build).
    """
    head = bytes(data[:32])
    for image_format, prefixes in _MAGIC_PREFIXES:
        if head.startswith(prefixes):
            return image_format
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 18:
        dib_header_size = struct.unpack_from("<I", head, 14)[0]
        if dib_header_size in _BMP_DIB_HEADER_SIZES:
            return "bmp"
    if head[4:8] == b"ftyp":
        return _sniff_iso_media_brand(data)
    return None


def read_dimensions(data: bytes) -> tuple[int, int]:
    """Return (width, height) read from the image header alone.

    The size is the one stored in the file, before the EXIF orientation
    swaps it. JPEG, PNG, GIF, WebP and BMP headers are parsed here, so any
    claimed size is returned. Other formats are read by Pillow, which
    rejects sizes above twice ``Image.MAX_IMAGE_PIXELS``, and then
    ``ImageTooLargeError`` is raised. Data that is no image raises
    ``NotAnImageError``, a format this build cannot decode raises
    ``UnsupportedImageError``.
    """
    return _read_header_dimensions(data, _require_image_format(data))


# Argument and limit checks


def _check_arguments(max_pixels: int, reduce_to: int | None) -> None:
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if reduce_to is not None and reduce_to < 1:
        raise ValueError(f"reduce_to must be a positive int or None, got {reduce_to!r}")


def _check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    pixel_count = width * height
    limit = max_pixels
    limit_name = "max_pixels"
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and pillow_limit < limit:
        limit = int(pillow_limit)
        limit_name = "Pillow's Image.MAX_IMAGE_PIXELS"
    if pixel_count > limit:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {pixel_count:,} pixels, above the limit "
            f"of {limit:,} pixels ({limit_name}). Send a smaller image."
        )


def _read_file(path: str | os.PathLike[str], max_bytes: int | None) -> bytes:
    # Opening without blocking, then checking the type, keeps a FIFO or a
    # device named like an image from blocking the reader forever.
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise NotAnImageError(f"{os.fspath(path)}: not a regular file")
    os.set_blocking(descriptor, True)
    with os.fdopen(descriptor, "rb") as file:
        if max_bytes is None:
            return file.read()
        size = os.fstat(file.fileno()).st_size
        # Reading one byte past the limit also catches a file that grows.
        data = file.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:
        raise ImageTooLargeError(
            f"{os.fspath(path)}: file is {max(size, len(data)):,} bytes, above "
            f"the limit of {max_bytes:,} bytes (max_bytes)"
        )
    return data


# Format sniffing

_MAGIC_PREFIXES = (
    ("jpeg", (b"\xff\xd8\xff",)),
    ("png", (b"\x89PNG\r\n\x1a\n",)),
    ("gif", (b"GIF87a", b"GIF89a")),
    ("tiff", (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
    ("jxl", (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")),
    ("jp2", (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")),
)
# BITMAPCOREHEADER, BITMAPINFOHEADER and its later versions.
_BMP_DIB_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIC_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
)


def _sniff_iso_media_brand(data: bytes) -> str | None:
    """Name the image format of an ISO media file from its ftyp box."""
    box_size = struct.unpack_from(">I", data, 0)[0]
    box_end = min(max(box_size, 16), len(data), 256)
    brands = {bytes(data[8:12])}
    brands.update(bytes(data[i:i + 4]) for i in range(16, box_end - 3, 4))
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIC_BRANDS:
        return "heic"
    return None


def _require_image_format(data: bytes) -> str:
    image_format = sniff_format(data)
    if image_format is None:
        raise NotAnImageError(f"not an image: {_describe_content(data)}")
    return image_format


def _require_supported(image_format: str) -> None:
    if image_format not in PILLOW_FORMATS:
        raise UnsupportedImageError(
            f"{image_format.upper()} images are not supported. "
            f"Convert the image to PNG or JPEG."
        )


def _describe_content(data: bytes) -> str:
    """Say what non-image data looks like, for the NotAnImageError message."""
    if not data:
        return "the data is empty (0 bytes)"
    text = bytes(data[:1024]).decode("utf-8", errors="replace")
    text = text.lstrip("\ufeff \t\r\n")
    lowered = text.lower()
    preview = repr(text[:40])
    if lowered.startswith(("<!doctype html", "<html")) or "<body" in lowered:
        kind = "an HTML page"
    elif "<svg" in lowered:
        kind = "an SVG document"
    elif lowered.startswith("<"):
        kind = "an XML document"
    elif lowered.startswith(("{", "[")):
        kind = "a JSON document"
    elif "\ufffd" not in text and all(c.isprintable() or c.isspace() for c in text):
        kind = "plain text"
    else:
        head = bytes(data[:8]).hex(" ")
        return f"the {len(data):,} bytes start with {head}, no known image signature"
    return f"the {len(data):,} bytes look like {kind} (starting {preview})"


# Header dimensions


def _read_header_dimensions(data: bytes, image_format: str) -> tuple[int, int]:
    reader = _HEADER_READERS.get(image_format)
    if reader is None:
        return _read_pillow_dimensions(data, image_format)
    try:
        return reader(data)
    except struct.error as exc:
        raise TruncatedImageError(
            f"{image_format.upper()} data of {len(data):,} bytes ends inside its header"
        ) from exc


def _read_jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """Walk the JPEG marker segments up to the frame header (SOFn)."""
    position = 2
    while True:
        marker, position = _next_jpeg_marker(data, position)
        if marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0xD9, 0xDA):
            raise CorruptImageError(
                "JPEG has no frame header (SOF) before its image data"
            )
        (length,) = struct.unpack_from(">H", data, position)
        if _is_jpeg_frame_marker(marker):
            height, width = struct.unpack_from(">HH", data, position + 3)
            return _require_nonzero("JPEG", width, height)
        position += length


def _next_jpeg_marker(data: bytes, position: int) -> tuple[int, int]:
    """Return the next marker code and the position after it, skipping fill bytes."""
    position = data.find(b"\xff", position)
    if position < 0:
        raise struct.error("no JPEG marker left")
    while position < len(data) and data[position] == 0xFF:
        position += 1
    if position >= len(data):
        raise struct.error("no JPEG marker left")
    return data[position], position + 1


def _is_jpeg_frame_marker(marker: int) -> bool:
    # SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
    return 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)


def _read_png_dimensions(data: bytes) -> tuple[int, int]:
    chunk_type = bytes(data[12:16])
    if len(data) >= 16 and chunk_type != b"IHDR":
        raise CorruptImageError(
            f"PNG starts with a {chunk_type!r} chunk instead of IHDR"
        )
    width, height = struct.unpack_from(">II", data, 16)
    return _require_nonzero("PNG", width, height)


def _read_gif_dimensions(data: bytes) -> tuple[int, int]:
    # The logical screen size. Pillow grows the image when the first frame
    # is larger, and that size is checked again after opening.
    return struct.unpack_from("<HH", data, 6)


def _read_webp_dimensions(data: bytes) -> tuple[int, int]:
    chunk_type = bytes(data[12:16])
    if chunk_type == b"VP8X":
        width_minus_one, height_minus_one = struct.unpack_from("<3s3s", data, 24)
        width = int.from_bytes(width_minus_one, "little") + 1
        height = int.from_bytes(height_minus_one, "little") + 1
        return width, height
    if chunk_type == b"VP8L":
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk_type == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return _require_nonzero("WebP", width & 0x3FFF, height & 0x3FFF)
    if len(data) < 16:
        raise struct.error("no chunk header")
    raise CorruptImageError(f"WebP starts with an unknown {chunk_type!r} chunk")


def _read_bmp_dimensions(data: bytes) -> tuple[int, int]:
    (dib_header_size,) = struct.unpack_from("<I", data, 14)
    if dib_header_size == 12:
        return struct.unpack_from("<HH", data, 18)
    width, height = struct.unpack_from("<ii", data, 18)
    # A negative height marks rows stored top to bottom.
    return _require_nonzero("BMP", abs(width), abs(height))


def _read_pillow_dimensions(data: bytes, image_format: str) -> tuple[int, int]:
    _require_supported(image_format)
    image, _ = _open_image(data, image_format)
    with image:
        return image.size


def _require_nonzero(format_name: str, width: int, height: int) -> tuple[int, int]:
    if width == 0 or height == 0:
        raise CorruptImageError(
            f"{format_name} header gives a size of {width}x{height}"
        )
    return width, height


_HEADER_READERS = {
    "bmp": _read_bmp_dimensions,
    "gif": _read_gif_dimensions,
    "jpeg": _read_jpeg_dimensions,
    "png": _read_png_dimensions,
    "webp": _read_webp_dimensions,
}


# Container checks made before decoding


def _check_container(data: bytes, image_format: str) -> None:
    if image_format == "png":
        _check_png_chunks(data)
    elif image_format == "webp":
        _check_riff_size(data)
    elif image_format == "jp2":
        _check_jpeg2000_end(data)


def _check_png_chunks(data: bytes) -> None:
    """Raise TruncatedImageError unless every PNG chunk is complete.

    A PNG that stops at a chunk boundary before IEND is accepted when its
    IDAT data forms a complete zlib stream, since then only the end marker
    is missing.
    """
    position = 8
    idat_ranges = []
    while position + 8 <= len(data):
        length, chunk_type = struct.unpack_from(">I4s", data, position)
        chunk_end = position + 12 + length
        if chunk_end > len(data):
            raise TruncatedImageError(
                f"PNG data ends inside the {chunk_type.decode('latin-1')!r} chunk at "
                f"byte {position:,}: the chunk needs {chunk_end:,} bytes, the data "
                f"has {len(data):,}"
            )
        if chunk_type == b"IEND":
            return
        if chunk_type == b"IDAT":
            idat_ranges.append((position + 8, position + 8 + length))
        position = chunk_end
    if not _is_zlib_stream_complete(data, idat_ranges):
        raise TruncatedImageError(
            f"PNG data ends at byte {len(data):,} before its IEND chunk, "
            f"and the compressed pixel data (IDAT) is incomplete"
        )


def _is_zlib_stream_complete(data: bytes, ranges: list[tuple[int, int]]) -> bool:
    """Inflate the ranges, discarding output, and report whether the stream ended."""
    inflater = zlib.decompressobj()
    view = memoryview(data)
    try:
        for start, end in ranges:
            pending = view[start:end]
            while pending and not inflater.eof:
                inflater.decompress(pending, 1 << 20)
                pending = inflater.unconsumed_tail
    except zlib.error:
        return False
    return inflater.eof


def _check_riff_size(data: bytes) -> None:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if 8 + riff_size > len(data):
        raise TruncatedImageError(
            f"WebP data is {len(data):,} bytes but its RIFF header announces "
            f"{8 + riff_size:,}"
        )


def _check_jpeg2000_end(data: bytes) -> None:
    """Raise TruncatedImageError unless the codestream ends with its EOC marker.

    Pillow reports a cut JPEG 2000 codestream only as a broken data stream,
    so the end is checked here to name the fault.
    """
    start, end = 0, len(data)
    if not data.startswith(b"\xff\x4f"):
        start, end = _find_jp2_codestream_box(data)
    if end > len(data) or data[max(start, end - 2):end] != _JPEG2000_EOC:
        raise TruncatedImageError(
            f"JPEG 2000 data of {len(data):,} bytes ends before the end of its "
            f"codestream (EOC marker)"
        )


def _find_jp2_codestream_box(data: bytes) -> tuple[int, int]:
    """Return the start and end of the contiguous codestream box (jp2c)."""
    position = 0
    while position + 8 <= len(data):
        length, box_type = struct.unpack_from(">I4s", data, position)
        header_size = 8
        if length == 1:
            (length,) = struct.unpack_from(">Q", data, position + 8)
            header_size = 16
        elif length == 0:
            length = len(data) - position
        if box_type == b"jp2c":
            return position + header_size, position + length
        if length < header_size:
            raise CorruptImageError(
                f"JPEG 2000 box {box_type!r} at byte {position:,} has an invalid "
                f"length of {length}"
            )
        position += length
    raise TruncatedImageError(
        f"JPEG 2000 data of {len(data):,} bytes ends before its codestream box"
    )


# Opening and loading


class _EndTrackingReader(io.BytesIO):
    """In-memory file that records when a read finds no data left."""

    read_past_end = False

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        if not chunk and size != 0:
            self.read_past_end = True
        return chunk


def _open_image(
    data: bytes, image_format: str
) -> tuple[Image.Image, _EndTrackingReader]:
    """Open the header with Pillow, limited to the sniffed format's plugins.

    Limiting the plugins keeps Pillow from trying formats that accept
    arbitrary data, such as EPS, which would start Ghostscript.
    """
    reader = _EndTrackingReader(data)
    try:
        image = Image.open(reader, formats=PILLOW_FORMATS[image_format])
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is too large for Pillow: {exc}") from exc
    except _PILLOW_DATA_ERRORS as exc:
        raise _damaged_header_error(image_format, reader, exc) from exc
    return image, reader


def _damaged_header_error(
    image_format: str, reader: _EndTrackingReader, exc: Exception
) -> CorruptImageError:
    name = image_format.upper()
    if reader.read_past_end:
        return TruncatedImageError(f"{name} data ends inside its header ({exc})")
    return CorruptImageError(f"{name} header is invalid: {exc}")


def _open_checked(
    data: bytes, image_format: str, max_pixels: int, reduce_to: int | None
) -> tuple[Image.Image, _EndTrackingReader]:
    image, reader = _open_image(data, image_format)
    # Pillow may report another size than the header read here (a GIF frame
    # larger than its screen), so the limit is checked again.
    _check_pixel_count(image.width, image.height, max_pixels)
    if reduce_to is not None:
        _apply_jpeg_draft(image, reduce_to)
    return image, reader


def _load_tracked(image: Image.Image, reader: _EndTrackingReader) -> bool:
    """Load the pixels and return whether the decoder read past the data.

    When Pillow runs out of data, it raises or pads the missing pixels
    with grey, depending on its global LOAD_TRUNCATED_IMAGES flag. Either
    way the read past the end is recorded, so the caller decides without
    that flag. A decoder error
    after such a read raises TruncatedImageError.
    """
    reader.read_past_end = False
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is too large for Pillow: {exc}") from exc
    except _PILLOW_DATA_ERRORS as exc:
        if reader.read_past_end:
            raise TruncatedImageError(
                f"{image.format} data ends before the last pixel ({exc})"
            ) from exc
        raise CorruptImageError(f"{image.format} data is invalid: {exc}") from exc
    return reader.read_past_end


def _load_other(data: bytes, image_format: str, max_pixels: int) -> Image.Image:
    image, reader = _open_checked(data, image_format, max_pixels, None)
    read_past_end = _load_tracked(image, reader)
    if read_past_end and image_format not in _READ_PAST_END_WHEN_COMPLETE:
        raise TruncatedImageError(
            f"{image_format.upper()} data of {len(data):,} bytes ends before "
            f"the last pixel"
        )
    return image


def _load_jpeg(data: bytes, max_pixels: int, reduce_to: int | None) -> Image.Image:
    if data.find(_JPEG_EOI, 2) >= 0:
        image, reader = _open_checked(data, "jpeg", max_pixels, reduce_to)
        try:
            if not _load_tracked(image, reader):
                return image
        except TruncatedImageError:
            # The EOI found may belong to an embedded thumbnail.
            pass
    return _load_jpeg_without_eoi(data, max_pixels, reduce_to)


def _load_jpeg_without_eoi(
    data: bytes, max_pixels: int, reduce_to: int | None
) -> Image.Image:
    """Decode a JPEG that ends without an EOI marker, or raise if its scan data is cut.

    libjpeg needs the EOI marker to finish, and when a marker comes early
    it fills the rest of the scan with grey blocks instead of failing. So
    the data is decoded twice: once with EOI appended and once with filler
    bytes before the EOI. Complete scan data makes libjpeg skip the filler
    as junk between markers, so both decodes give the same pixels. Cut scan
    data makes libjpeg decode the filler as coefficients, so they differ.
    """
    logger.debug(
        "JPEG data of %d bytes has no EOI marker, so its scan data is checked",
        len(data),
    )
    image = _load_jpeg_with_tail(data + _JPEG_EOI, max_pixels, reduce_to)
    with_filler = _load_jpeg_with_tail(
        data + _JPEG_SCAN_FILLER + _JPEG_EOI, max_pixels, reduce_to
    )
    if ImageChops.difference(image, with_filler).getbbox() is not None:
        raise TruncatedImageError(
            f"JPEG data of {len(data):,} bytes ends inside its scan data, "
            f"so the image is incomplete"
        )
    return image


def _load_jpeg_with_tail(
    data: bytes, max_pixels: int, reduce_to: int | None
) -> Image.Image:
    image, reader = _open_checked(data, "jpeg", max_pixels, reduce_to)
    if _load_tracked(image, reader):
        raise TruncatedImageError(
            "JPEG data is incomplete even with an EOI marker added"
        )
    return image


def _apply_jpeg_draft(image: Image.Image, reduce_to: int) -> None:
    """Ask libjpeg for the smallest DCT scale whose long side stays >= reduce_to."""
    if image.format not in ("JPEG", "MPO"):
        return
    width, height = image.size
    long_side = max(width, height)
    for scale in _JPEG_DRAFT_SCALES:
        # libjpeg rounds scaled sizes up.
        if -(-long_side // scale) >= reduce_to:
            break
    else:
        return
    # Pillow picks the largest scale that fits inside the requested size,
    # and width // scale keeps that choice at exactly this scale.
    requested = (max(1, width // scale), max(1, height // scale))
    image.draft(None, requested)
    logger.debug("decoding %dx%d JPEG at 1/%d scale, giving %dx%d",
                 width, height, scale, image.width, image.height)


# Orientation and pixel modes


def _apply_exif_orientation(image: Image.Image) -> None:
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError, struct.error) as exc:
        # Broken EXIF is common in photos, and the pixels are still valid.
        logger.warning("ignored unreadable EXIF orientation: %s", exc)


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    # NOTE: embedded ICC profiles are not applied, so CMYK and wide-gamut
    # images get Pillow's plain conversion formulas.
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _scale_to_grey(image).convert("RGB")
    if mode in _PREMULTIPLIED_MODES:
        image = image.convert(_PREMULTIPLIED_MODES[mode])
        mode = image.mode
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(image)
    if mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise UnsupportedImageError(
            f"{image.format} image in pixel mode {mode} cannot be converted to RGB"
        ) from exc


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Blend the image onto white, so colour under transparent pixels never shows."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, WHITE_RGBA)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_to_grey(image: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer or float samples to an 8-bit "L" image.

    Pillow's own conversion clamps these samples to 0..255, which turns a
    16-bit image white. Here 16-bit samples are divided by 257, so 65535
    becomes 255.
    """
    samples = np.asarray(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        scaled = (samples.astype(np.uint32) + 128) // 257
    elif image.mode == "I":
        scaled = _scale_integer_samples(samples.astype(np.int64))
    else:
        scaled = _scale_float_samples(samples.astype(np.float64))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))


def _scale_integer_samples(samples: np.ndarray) -> np.ndarray:
    # NOTE: mode "I" does not record a bit depth, so the range is guessed
    # from the values: 0..255 as 8-bit, 0..65535 as 16-bit, else min..max.
    low, high = int(samples.min()), int(samples.max())
    if low >= 0 and high <= 255:
        return samples
    if low >= 0 and high <= 65535:
        return (samples + 128) // 257
    return _stretch(samples.astype(np.float64), low, high)


def _scale_float_samples(samples: np.ndarray) -> np.ndarray:
    # NOTE: mode "F" does not record a range either: values within 0..1
    # are taken as fractions, within 0..255 as 8-bit levels, else min..max.
    samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(samples.min()), float(samples.max())
    if low >= 0.0 and high <= 1.0:
        return np.rint(samples * 255.0)
    if low >= 0.0 and high <= 255.0:
        return np.rint(samples)
    return _stretch(samples, low, high)


def _stretch(samples: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(samples.shape)
    return np.rint((samples - low) * (255.0 / (high - low)))
