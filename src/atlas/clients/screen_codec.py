"""Screen pictures as stream payloads: key frames and delta frames.

The relay only knows that a frame is a *key* frame (decodable on its own) or a *delta*
frame (needs the frames since the last key frame, :mod:`atlas.protocol.frames`). What
the payload holds is the clients' business, and this module's:

* **Key frame payload**: one whole picture as a JPEG (or WebP) file — save the payload
  and any image viewer opens it. Its comment (JPEG ``COM`` segment; WebP: the XMP chunk)
  says ``atlas-frame counter=<n> captured_us=<µs>``, the source's frame counter.
* **Delta frame payload**: the regions that changed since the previous picture, each a
  small JPEG/WebP of that rectangle, after a fixed header (big-endian)::

      "ATD1" | width u16 | height u16 | counter u64 | region count u16
      then per region: x u16 | y u16 | w u16 | h u16 | length u32
      then the regions' image bytes, in the same order

  Regions are found by comparing the picture with the previous one in strips of
  :data:`STRIP` pixel rows (exactly, pixel by pixel: sources are lossless), aligned to
  the codec's 16-pixel blocks. A picture that did not change is a delta with no regions
  (a few bytes, which still carries the counter and timestamp). When more than
  ``max_delta_area`` of the picture changed, a key frame is cheaper and is sent instead.

  The viewer pastes the regions onto its last picture. Each region is lossy-encoded on
  its own, so errors accumulate a little between key frames; the periodic key frame
  (every ``key_interval`` frames, or on :meth:`ScreenEncoder.request_key_frame`) resets
  them. An honest simplification: this is not a video codec (no motion search, no
  inter-frame prediction inside a region), only "send what changed".

Pure: images and bytes in, images and bytes out; no clock, no I/O.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from typing import Final, Literal

from PIL import Image, ImageChops

ImageFormat = Literal["jpeg", "webp"]
FORMATS: Final[tuple[ImageFormat, ...]] = ("jpeg", "webp")
EXTENSIONS: Final[dict[str, str]] = {"jpeg": "jpg", "webp": "webp"}
DELTA_MAGIC: Final = b"ATD1"
DELTA_HEADER: Final = struct.Struct("!4sHHQH")
REGION: Final = struct.Struct("!HHHHI")
STRIP: Final = 32
BLOCK: Final = 16
MAX_REGIONS: Final = 1024
DEFAULT_KEY_INTERVAL: Final = 30
DEFAULT_QUALITY: Final = 75
_COMMENT_RE: Final = re.compile(rb"atlas-frame counter=(\d+) captured_us=(\d+)")


class CodecError(ValueError):
    """A payload that is not what this module writes (the publisher's fault)."""


class NeedKeyFrame(Exception):
    """A delta arrived without the picture it applies to (joined late, frames skipped)."""


@dataclass(frozen=True, slots=True)
class Region:
    x: int
    y: int
    w: int
    h: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.w, self.y + self.h)

    @property
    def area(self) -> int:
        return self.w * self.h


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One picture ready to publish."""

    key: bool
    payload: bytes
    counter: int
    captured_us: int
    regions: int = 0  # changed regions carried by a delta


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """One picture as the viewer has it after applying a frame."""

    key: bool
    image: Image.Image
    counter: int
    captured_us: int | None  # key frames carry it; deltas use the frame header's


def frame_comment(counter: int, captured_us: int) -> bytes:
    return b"atlas-frame counter=%d captured_us=%d" % (counter, captured_us)


def parse_comment(comment: bytes | str | None) -> tuple[int, int] | None:
    """``(counter, captured_us)`` from a key frame's comment, if it has one."""
    if comment is None:
        return None
    raw = comment.encode() if isinstance(comment, str) else comment
    match = _COMMENT_RE.search(raw)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def encode_image(image: Image.Image, fmt: ImageFormat, quality: int,
                 comment: bytes | None = None) -> bytes:
    out = io.BytesIO()
    if fmt == "jpeg":
        kwargs: dict[str, object] = {"quality": quality}
        if comment is not None:
            kwargs["comment"] = comment
        image.save(out, "JPEG", **kwargs)
    else:
        kwargs = {"quality": quality, "method": 0}
        if comment is not None:
            kwargs["xmp"] = comment
        image.save(out, "WEBP", **kwargs)
    return out.getvalue()


def open_image(data: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CodecError(f"not a picture: {exc}") from None
    if img.format not in ("JPEG", "WEBP"):
        raise CodecError(f"unexpected picture format {img.format}")
    return img


def key_frame_counter(data: bytes) -> tuple[int, int] | None:
    """``(counter, captured_us)`` of a key frame payload (from its comment)."""
    img = open_image(data)
    return parse_comment(img.info.get("comment") or img.info.get("xmp"))


def changed_regions(before: Image.Image, after: Image.Image) -> list[Region]:
    """Rectangles covering every pixel that differs, strip by strip, block-aligned.

    Adjacent strips whose changes span about the same columns merge into one region
    (fewer, larger patches compress better than many slivers).
    """
    if before.size != after.size:
        return [Region(0, 0, *after.size)]
    diff = ImageChops.difference(before, after).convert("L")
    if diff.getbbox() is None:
        return []
    w, h = after.size
    regions: list[Region] = []
    for top in range(0, h, STRIP):
        bottom = min(h, top + STRIP)
        bbox = diff.crop((0, top, w, bottom)).getbbox()
        if bbox is None:
            continue
        left = bbox[0] // BLOCK * BLOCK
        right = min(w, -(-bbox[2] // BLOCK) * BLOCK)
        region = Region(left, top, right - left, bottom - top)
        if regions:
            last = regions[-1]
            if last.y + last.h == top:
                lo, hi = min(last.x, left), max(last.x + last.w, right)
                merged = Region(lo, last.y, hi - lo, last.h + region.h)
                if merged.area <= 1.25 * (last.area + region.area):
                    regions[-1] = merged
                    continue
        regions.append(region)
    return regions


def pack_delta(size: tuple[int, int], counter: int,
               patches: list[tuple[Region, bytes]]) -> bytes:
    if len(patches) > MAX_REGIONS:
        raise ValueError(f"{len(patches)} regions in one delta (at most {MAX_REGIONS})")
    parts = [DELTA_HEADER.pack(DELTA_MAGIC, size[0], size[1], counter, len(patches))]
    parts += [REGION.pack(r.x, r.y, r.w, r.h, len(data)) for r, data in patches]
    parts += [data for _r, data in patches]
    return b"".join(parts)


def unpack_delta(payload: bytes) -> tuple[tuple[int, int], int, list[tuple[Region, bytes]]]:
    """``(size, counter, [(region, image bytes), …])`` of a delta payload."""
    if len(payload) < DELTA_HEADER.size:
        raise CodecError(f"delta payload of {len(payload)} bytes is shorter than its header")
    magic, width, height, counter, count = DELTA_HEADER.unpack_from(payload)
    if magic != DELTA_MAGIC:
        raise CodecError(f"not a delta payload (magic {magic!r})")
    if count > MAX_REGIONS:
        raise CodecError(f"{count} regions in one delta (at most {MAX_REGIONS})")
    pos = DELTA_HEADER.size + count * REGION.size
    if len(payload) < pos:
        raise CodecError("delta payload ends inside its region table")
    regions: list[tuple[Region, bytes]] = []
    for i in range(count):
        x, y, w, h, length = REGION.unpack_from(payload, DELTA_HEADER.size + i * REGION.size)
        if w == 0 or h == 0 or x + w > width or y + h > height:
            raise CodecError(f"region {i} ({x},{y} {w}x{h}) lies outside {width}x{height}")
        if pos + length > len(payload):
            raise CodecError(f"region {i} runs past the end of the payload")
        regions.append((Region(x, y, w, h), payload[pos:pos + length]))
        pos += length
    if pos != len(payload):
        raise CodecError(f"{len(payload) - pos} bytes after the last region")
    return (width, height), counter, regions


class ScreenEncoder:
    """Pictures in, key and delta payloads out, with a key frame every ``key_interval``."""

    def __init__(self, *, fmt: ImageFormat = "jpeg", quality: int = DEFAULT_QUALITY,
                 key_interval: int = DEFAULT_KEY_INTERVAL,
                 max_delta_area: float = 0.5) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown picture format {fmt!r}: choose jpeg or webp")
        if not 1 <= quality <= 100:
            raise ValueError("quality is from 1 to 100")
        if key_interval < 1:
            raise ValueError("the key frame interval is at least 1 frame")
        self.fmt: ImageFormat = fmt
        self.quality = quality
        self.key_interval = key_interval
        self.max_delta_area = max_delta_area
        self._previous: Image.Image | None = None
        self._since_key = 0
        self._key_wanted = True

    def request_key_frame(self) -> None:
        """Make the next frame a key frame (a new viewer, a reconnect, a restart)."""
        self._key_wanted = True

    def encode(self, image: Image.Image, counter: int, captured_us: int) -> EncodedFrame:
        image = image.convert("RGB") if image.mode != "RGB" else image
        previous, self._previous = self._previous, image
        regions: list[Region] = []
        key = (self._key_wanted or previous is None or self._since_key >= self.key_interval)
        if not key:
            assert previous is not None
            regions = changed_regions(previous, image)
            changed = sum(r.area for r in regions)
            key = changed > self.max_delta_area * image.width * image.height
        if key:
            self._key_wanted = False
            self._since_key = 1
            payload = encode_image(image, self.fmt, self.quality,
                                   frame_comment(counter, captured_us))
            return EncodedFrame(True, payload, counter, captured_us)
        self._since_key += 1
        patches = [(r, encode_image(image.crop(r.box), self.fmt, self.quality))
                   for r in regions]
        payload = pack_delta(image.size, counter, patches)
        return EncodedFrame(False, payload, counter, captured_us, len(patches))


class ScreenDecoder:
    """Key and delta payloads in, whole pictures out (what the viewer shows or saves)."""

    def __init__(self) -> None:
        self._picture: Image.Image | None = None

    def reset(self) -> None:
        """Forget the current picture: the next frame must be a key frame."""
        self._picture = None

    def decode(self, key: bool, payload: bytes) -> DecodedFrame:
        if key:
            img = open_image(payload)
            meta = parse_comment(img.info.get("comment") or img.info.get("xmp"))
            picture = img.convert("RGB")
            self._picture = picture
            counter, captured = meta if meta is not None else (0, None)
            return DecodedFrame(True, picture, counter, captured)
        if self._picture is None:
            raise NeedKeyFrame("a delta frame before any key frame")
        size, counter, patches = unpack_delta(payload)
        if size != self._picture.size:
            self._picture = None
            raise NeedKeyFrame(f"a delta for {size[0]}x{size[1]} on a "
                               "picture of another size")
        picture = self._picture.copy()
        for region, data in patches:
            patch = open_image(data).convert("RGB")
            if patch.size != (region.w, region.h):
                raise CodecError(f"region {region} carries a {patch.size} picture")
            picture.paste(patch, (region.x, region.y))
        self._picture = picture
        return DecodedFrame(False, picture, counter, None)
