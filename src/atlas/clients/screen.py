"""Screen sources: what a participant shares (its screen, or a test pattern).

* ``test-pattern`` (the default): a generated picture that changes every frame — colour
  bars and a grid that stay put, a box that moves, and a caption with the frame counter
  and the capture time (UTC, milliseconds). A person watching sees at once that frames
  arrive, in order and how late; a test reads the same counter from the frame's
  metadata (:mod:`atlas.clients.screen_codec`). Only the box and the caption change,
  so delta frames are small, as a real desktop's mostly are.
* ``desktop``: the real screen through ``mss``, when a display exists; otherwise
  :class:`ScreenUnavailable` says why (no ``DISPLAY``, ``mss`` not installed).

A source only draws; encoding is :mod:`atlas.clients.screen_codec`, pacing is the
publisher's. Drawing is CPU work: callers run :meth:`ScreenSource.grab` in a thread.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, Literal, Protocol

from PIL import Image, ImageDraw, ImageFont

SourceName = Literal["test-pattern", "desktop"]
SOURCE_NAMES: Final[tuple[SourceName, ...]] = ("test-pattern", "desktop")
DEFAULT_SIZE: Final = (640, 360)
MIN_SIZE: Final = (64, 48)
MAX_SIZE: Final = (3840, 2160)

_BARS: Final = (
    (192, 192, 192), (192, 192, 0), (0, 192, 192), (0, 192, 0),
    (192, 0, 192), (192, 0, 0), (0, 0, 192),
)


class ScreenUnavailable(Exception):
    """The source cannot capture here (no display, a missing package)."""


class ScreenSource(Protocol):
    """Something that produces the pictures a participant shares."""

    name: str

    @property
    def size(self) -> tuple[int, int]:
        """Width and height of the pictures, in pixels."""
        ...

    def grab(self, counter: int, captured_at: float) -> Image.Image:
        """The picture for frame ``counter`` taken at ``captured_at`` (epoch seconds), RGB."""
        ...

    def close(self) -> None:
        ...


def parse_size(text: str) -> tuple[int, int]:
    """``640x360`` → ``(640, 360)``, within :data:`MIN_SIZE` and :data:`MAX_SIZE`."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.strip().isdigit() or not h.strip().isdigit():
        raise ValueError(f"size {text!r}: expected WIDTHxHEIGHT such as 640x360")
    size = (int(w), int(h))
    if not (MIN_SIZE[0] <= size[0] <= MAX_SIZE[0] and MIN_SIZE[1] <= size[1] <= MAX_SIZE[1]):
        raise ValueError(
            f"size {text!r}: from {MIN_SIZE[0]}x{MIN_SIZE[1]} to {MAX_SIZE[0]}x{MAX_SIZE[1]}"
        )
    return size


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


class TestPattern:
    """A moving test picture with the frame counter and time written on it."""

    __test__ = False  # not a pytest class, whatever its name says
    name = "test-pattern"

    def __init__(self, size: tuple[int, int] = DEFAULT_SIZE, *, label: str = "") -> None:
        self._size = size
        self.label = label
        self._background = self._draw_background()
        self._font = _font(max(10, size[1] // 18))
        self._small = _font(max(8, size[1] // 26))

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def _draw_background(self) -> Image.Image:
        w, h = self._size
        img = Image.new("RGB", self._size, (16, 16, 24))
        draw = ImageDraw.Draw(img)
        bar_h = h * 2 // 3
        for i, colour in enumerate(_BARS):
            draw.rectangle((i * w // len(_BARS), 0, (i + 1) * w // len(_BARS) - 1, bar_h - 1),
                           fill=colour)
        step = max(8, w // 32)
        for x in range(0, w, step):
            draw.line((x, bar_h, x, h), fill=(60, 60, 70))
        for y in range(bar_h, h, step):
            draw.line((0, y, w, y), fill=(60, 60, 70))
        return img

    def box(self, counter: int) -> tuple[int, int, int, int]:
        """Where the moving box is in frame ``counter`` (it bounces along the grid)."""
        w, h = self._size
        side = max(8, h // 8)
        top = h * 2 // 3 + max(1, (h // 3 - side) // 2)
        span = max(1, w - side)
        pos = (counter * max(2, w // 80)) % (2 * span)
        left = pos if pos < span else 2 * span - pos
        return (left, top, left + side - 1, top + side - 1)

    def caption(self, counter: int, captured_at: float) -> tuple[str, str]:
        stamp = datetime.fromtimestamp(captured_at, UTC).isoformat(timespec="milliseconds")
        title = "ATLAS TEST PATTERN" + (f" — {self.label}" if self.label else "")
        return title, f"frame {counter:06d}  {stamp.replace('+00:00', 'Z')}"

    def grab(self, counter: int, captured_at: float) -> Image.Image:
        img = self._background.copy()
        draw = ImageDraw.Draw(img)
        hue = (counter * 7) % 256
        draw.rectangle(self.box(counter), fill=(255, hue, 255 - hue), outline=(0, 0, 0))
        title, line = self.caption(counter, captured_at)
        w, h = self._size
        pad = max(2, h // 60)
        text_h = self._font.getbbox(line)[3] + self._small.getbbox(title)[3] + 3 * pad
        draw.rectangle((0, 0, w - 1, text_h), fill=(0, 0, 0))
        draw.text((pad, pad), title, fill=(200, 200, 200), font=self._small)
        draw.text((pad, 2 * pad + self._small.getbbox(title)[3]), line, fill=(255, 255, 255),
                  font=self._font)
        return img

    def close(self) -> None:
        return None


class DesktopScreen:
    """The real screen (the first monitor, or all of them with ``monitor=0``) via mss."""

    name = "desktop"

    def __init__(self, *, monitor: int = 1, max_size: tuple[int, int] | None = None) -> None:
        try:
            mss_module: Any = importlib.import_module("mss")
        except ImportError:
            raise ScreenUnavailable(
                "the desktop source needs the 'mss' package (pip install mss); "
                "use --source test-pattern instead"
            ) from None
        factory = getattr(mss_module, "MSS", None) or mss_module.mss
        try:
            self._mss: Any = factory()
            monitors = self._mss.monitors
        except Exception as exc:  # mss raises ScreenShotError subclasses per platform
            raise ScreenUnavailable(
                f"no display to capture ({exc}); use --source test-pattern instead"
            ) from None
        if not 0 <= monitor < len(monitors):
            self._mss.close()
            raise ScreenUnavailable(f"no monitor {monitor} (this display has {len(monitors) - 1})")
        self._monitor = monitors[monitor]
        native = (int(self._monitor["width"]), int(self._monitor["height"]))
        self._size = _fit(native, max_size) if max_size else native

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def grab(self, counter: int, captured_at: float) -> Image.Image:
        shot = self._mss.grab(self._monitor)
        img = Image.frombytes("RGB", shot.size, shot.bgra, "raw", "BGRX")
        if img.size != self._size:
            img = img.resize(self._size, Image.Resampling.BILINEAR)
        return img

    def close(self) -> None:
        self._mss.close()


def _fit(native: tuple[int, int], limit: tuple[int, int]) -> tuple[int, int]:
    """``native`` scaled down (aspect kept) to fit within ``limit``; never up."""
    scale = min(1.0, limit[0] / native[0], limit[1] / native[1])
    return (max(1, round(native[0] * scale)), max(1, round(native[1] * scale)))


def open_source(name: str, size: tuple[int, int] = DEFAULT_SIZE, *,
                label: str = "") -> ScreenSource:
    """The source called ``name``; ``size`` is the test pattern's size and the largest
    the desktop is scaled to."""
    if name == "test-pattern":
        return TestPattern(size, label=label)
    if name == "desktop":
        return DesktopScreen(max_size=size)
    raise ValueError(f"unknown screen source {name!r}: choose {' or '.join(SOURCE_NAMES)}")
