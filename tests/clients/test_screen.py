"""Screen sources: the test pattern a person and a test can read, and the real desktop."""

from __future__ import annotations

import itertools
import os

import pytest
from PIL import ImageChops

from atlas.clients.screen import (
    DEFAULT_SIZE,
    DesktopScreen,
    ScreenUnavailable,
    TestPattern,
    open_source,
    parse_size,
)

T0 = 1_790_000_000.0  # a fixed capture time


def test_default_size_and_mode() -> None:
    img = TestPattern().grab(1, T0)
    assert img.size == DEFAULT_SIZE
    assert img.mode == "RGB"


@pytest.mark.parametrize("size", [(64, 48), (320, 200), (1280, 720), (1917, 1079)])
def test_any_size_is_drawn_at_that_size(size: tuple[int, int]) -> None:
    assert TestPattern(size).grab(7, T0).size == size


def test_every_frame_differs_from_the_one_before() -> None:
    pattern = TestPattern((320, 180))
    frames = [pattern.grab(n, T0 + n / 10) for n in range(1, 20)]
    for before, after in itertools.pairwise(frames):
        assert ImageChops.difference(before, after).getbbox() is not None


def test_the_same_counter_and_time_draw_the_same_picture() -> None:
    a, b = TestPattern((320, 180)), TestPattern((320, 180))
    assert ImageChops.difference(a.grab(42, T0), b.grab(42, T0)).getbbox() is None


def test_the_caption_shows_the_counter_and_the_utc_time() -> None:
    title, line = TestPattern(label="customer").caption(123, T0 + 0.25)
    assert "customer" in title
    assert line.startswith("frame 000123")
    assert line.endswith("2026-09-21T14:13:20.250Z")


def test_only_the_box_and_the_caption_change() -> None:
    """What makes delta frames small: bars and grid stay put."""
    pattern = TestPattern((640, 360))
    diff = ImageChops.difference(pattern.grab(1, T0), pattern.grab(2, T0 + 0.1))
    bars_bottom = 360 * 2 // 3
    caption_bottom = 60
    assert diff.crop((0, 0, 640, caption_bottom)).getbbox() is not None  # the caption
    assert diff.crop((0, caption_bottom, 640, bars_bottom)).getbbox() is None  # the bars
    assert diff.crop((0, bars_bottom, 640, 360)).getbbox() is not None  # the box
    assert pattern.box(1)[1] >= bars_bottom


def test_the_box_bounces_and_stays_inside() -> None:
    pattern = TestPattern((200, 120))
    lefts = []
    for n in range(0, 400):
        left, top, right, bottom = pattern.box(n)
        assert 0 <= left <= right < 200 and 0 <= top <= bottom < 120
        lefts.append(left)
    side = pattern.box(0)[2] - pattern.box(0)[0] + 1
    assert min(lefts) == 0
    assert max(lefts) >= 200 - side - 2  # reaches the right edge (2 px steps) and back


@pytest.mark.parametrize(("text", "size"), [("640x360", (640, 360)), ("1280X720", (1280, 720)),
                                            (" 64x48 ", (64, 48))])
def test_parse_size(text: str, size: tuple[int, int]) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["640", "x360", "640x", "axb", "10x10", "9000x100", "-5x5"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_open_source_by_name() -> None:
    assert isinstance(open_source("test-pattern", (64, 48)), TestPattern)
    with pytest.raises(ValueError, match="unknown screen source"):
        open_source("webcam")


@pytest.mark.skipif(bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")),
                    reason="a display exists here")
def test_desktop_without_a_display_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(ScreenUnavailable, match=r"test-pattern"):
        DesktopScreen()


def test_desktop_without_mss_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_mss(name: str, *args: object, **kwargs: object) -> object:
        if name == "mss" or name.startswith("mss."):
            raise ImportError("No module named 'mss'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_mss)
    import sys

    monkeypatch.delitem(sys.modules, "mss", raising=False)
    with pytest.raises(ScreenUnavailable, match="pip install mss"):
        DesktopScreen()
