"""Key and delta frame payloads: cadence, sizes, metadata, round trips, refusals."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw, ImageStat

from atlas.clients.screen import TestPattern
from atlas.clients.screen_codec import (
    DELTA_HEADER,
    REGION,
    CodecError,
    NeedKeyFrame,
    Region,
    ScreenDecoder,
    ScreenEncoder,
    changed_regions,
    frame_comment,
    key_frame_counter,
    pack_delta,
    parse_comment,
    unpack_delta,
)

T0 = 1_790_000_000.0


def frames(n: int, size: tuple[int, int] = (320, 180)) -> list[Image.Image]:
    pattern = TestPattern(size)
    return [pattern.grab(i, T0 + i / 10) for i in range(1, n + 1)]


def encode_all(encoder: ScreenEncoder, pictures: list[Image.Image]) -> list[bool]:
    return [encoder.encode(p, i, int((T0 + i) * 1e6)).key
            for i, p in enumerate(pictures, start=1)]


def mean_error(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def test_first_frame_is_a_key_frame_then_one_every_key_interval() -> None:
    keys = encode_all(ScreenEncoder(key_interval=5), frames(16))
    assert [i for i, k in enumerate(keys, 1) if k] == [1, 6, 11, 16]


def test_key_interval_one_makes_every_frame_a_key_frame() -> None:
    assert all(encode_all(ScreenEncoder(key_interval=1), frames(4)))


def test_a_key_frame_on_request() -> None:
    encoder = ScreenEncoder(key_interval=100)
    pics = frames(6)
    keys = encode_all(encoder, pics[:3])
    encoder.request_key_frame()
    keys += encode_all(encoder, pics[3:])
    assert keys == [True, False, False, True, False, False]


def test_deltas_are_much_smaller_than_key_frames() -> None:
    encoder = ScreenEncoder(key_interval=30)
    out = [encoder.encode(p, i, 0) for i, p in enumerate(frames(10, (640, 360)), 1)]
    key, deltas = out[0], out[1:]
    assert key.key and not any(d.key for d in deltas)
    assert max(len(d.payload) for d in deltas) < len(key.payload) / 2


def test_a_picture_that_changed_everywhere_is_sent_as_a_key_frame() -> None:
    encoder = ScreenEncoder(key_interval=100)
    assert encoder.encode(Image.new("RGB", (128, 96), "black"), 1, 0).key
    assert encoder.encode(Image.new("RGB", (128, 96), "white"), 2, 0).key


def test_an_unchanged_picture_is_a_delta_without_regions() -> None:
    encoder = ScreenEncoder()
    picture = frames(1)[0]
    encoder.encode(picture, 1, 0)
    same = encoder.encode(picture.copy(), 2, 0)
    assert not same.key and same.regions == 0
    assert len(same.payload) == DELTA_HEADER.size
    assert unpack_delta(same.payload) == ((320, 180), 2, [])


def test_the_key_frame_is_a_plain_jpeg_carrying_the_counter() -> None:
    out = ScreenEncoder().encode(frames(1)[0], 77, 1_790_000_000_123_456)
    image = Image.open(io.BytesIO(out.payload))
    assert image.format == "JPEG" and image.size == (320, 180)
    assert key_frame_counter(out.payload) == (77, 1_790_000_000_123_456)


def test_webp_too() -> None:
    encoder = ScreenEncoder(fmt="webp", key_interval=3)
    decoder = ScreenDecoder()
    for i, picture in enumerate(frames(4), 1):
        out = encoder.encode(picture, i, 5)
        decoded = decoder.decode(out.key, out.payload)
        assert decoded.counter == i
        assert mean_error(decoded.image, picture) < 6
    assert Image.open(io.BytesIO(ScreenEncoder(fmt="webp").encode(
        frames(1)[0], 1, 0).payload)).format == "WEBP"


def test_decoding_rebuilds_every_picture_with_its_counter() -> None:
    encoder, decoder = ScreenEncoder(key_interval=10), ScreenDecoder()
    for i, picture in enumerate(frames(25, (640, 360)), 1):
        out = encoder.encode(picture, i, 0)
        decoded = decoder.decode(out.key, out.payload)
        assert decoded.counter == i
        assert decoded.key == out.key
        assert decoded.image.size == picture.size
        # lossy (JPEG) but faithful: small average error, no drift past the key frame
        assert mean_error(decoded.image, picture) < 4


def test_a_delta_without_its_key_frame_asks_for_one() -> None:
    encoder = ScreenEncoder()
    pics = frames(2)
    encoder.encode(pics[0], 1, 0)
    delta = encoder.encode(pics[1], 2, 0)
    with pytest.raises(NeedKeyFrame):
        ScreenDecoder().decode(False, delta.payload)


def test_changed_regions_cover_every_changed_pixel() -> None:
    before = Image.new("RGB", (300, 200), "navy")
    after = before.copy()
    draw = ImageDraw.Draw(after)
    draw.rectangle((10, 10, 20, 20), fill="red")
    draw.point((299, 199), fill="white")
    regions = changed_regions(before, after)
    assert regions
    patched = before.copy()
    for r in regions:
        assert r.x % 16 == 0 and r.x + r.w <= 300 and r.y + r.h <= 200
        patched.paste(after.crop(r.box), (r.x, r.y))
    assert ImageChops.difference(patched, after).getbbox() is None
    assert sum(r.area for r in regions) < 300 * 200 / 4


def test_no_change_no_regions() -> None:
    img = frames(1)[0]
    assert changed_regions(img, img.copy()) == []


region_st = st.builds(
    lambda x, y, w, h: Region(x, y, w, h),
    st.integers(0, 100), st.integers(0, 100), st.integers(1, 50), st.integers(1, 50),
)


@given(st.lists(st.tuples(region_st, st.binary(max_size=64)), max_size=8),
       st.integers(0, 2**64 - 1))
def test_delta_payload_round_trips(patches: list[tuple[Region, bytes]], counter: int) -> None:
    payload = pack_delta((150, 150), counter, patches)
    assert unpack_delta(payload) == ((150, 150), counter, patches)


def test_delta_golden_bytes() -> None:
    payload = pack_delta((640, 360), 5, [(Region(16, 32, 48, 8), b"AB")])
    assert payload == (b"ATD1" + bytes.fromhex("0280 0168 0000000000000005 0001")
                       + bytes.fromhex("0010 0020 0030 0008 00000002") + b"AB")
    assert REGION.size == 12 and DELTA_HEADER.size == 18


@pytest.mark.parametrize(("payload", "match"), [
    (b"", "shorter than its header"),
    (b"XXXX" + bytes(14), "not a delta payload"),
    (pack_delta((10, 10), 1, [(Region(0, 0, 5, 5), b"abc")])[:-1], "past the end"),
    (pack_delta((10, 10), 1, [(Region(0, 0, 5, 5), b"abc")]) + b"!", "after the last region"),
    (pack_delta((10, 10), 1, [(Region(8, 0, 5, 5), b"")]), "outside 10x10"),
    (pack_delta((10, 10), 1, [])[:-2] + b"\x00\x05", "region table"),
])
def test_bad_delta_payloads_are_refused(payload: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        unpack_delta(payload)


def test_a_key_frame_that_is_not_a_picture_is_refused() -> None:
    with pytest.raises(CodecError, match="not a picture"):
        ScreenDecoder().decode(True, b"definitely not a jpeg")


@pytest.mark.parametrize("bad", [{"fmt": "gif"}, {"quality": 0}, {"quality": 101},
                                 {"key_interval": 0}])
def test_encoder_settings_are_checked(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ScreenEncoder(**bad)  # type: ignore[arg-type]


def test_comment_round_trip() -> None:
    assert parse_comment(frame_comment(12, 34)) == (12, 34)
    assert parse_comment("atlas-frame counter=1 captured_us=2") == (1, 2)
    assert parse_comment(b"something else") is None
    assert parse_comment(None) is None
