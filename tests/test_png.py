"""shared/png.py: valid chunks and CRCs, and pixels that independent readers decode identically."""
from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from shared import png
from shared.encode import encode_png as encode_output_png
from tests.synthetic import write_series


def _chunks(buf: bytes) -> list[tuple[bytes, bytes]]:
    """Walk the chunks, checking every length and CRC with the standard library's zlib."""
    assert buf[:8] == b"\x89PNG\r\n\x1a\n"
    pos, found = 8, []
    while pos < len(buf):
        (length,) = struct.unpack(">I", buf[pos:pos + 4])
        kind, data = buf[pos + 4:pos + 8], buf[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", buf[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + data), kind
        found.append((kind, data))
        pos += 12 + length
    assert pos == len(buf)
    return found


def _reference_decode(buf: bytes) -> np.ndarray:
    """A decoder written from the PNG spec for the layouts we write (zlib inflate, all 5 filters)."""
    chunks = _chunks(buf)
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    samples = {0: 1, 2: 3}[colour]
    bpp = samples * depth // 8
    rows = np.frombuffer(zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT")), np.uint8)
    rows = rows.reshape(height, 1 + width * bpp)
    out = np.zeros((height, width * bpp), np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        up = out[y - 1] if y else np.zeros(width * bpp, np.int32)
        for x in range(width * bpp):
            a = out[y, x - bpp] if x >= bpp else 0
            b, c = up[x], (up[x - bpp] if x >= bpp else 0)
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
            out[y, x] = (line[x] + pred) % 256
    pixels = out.astype(np.uint8)
    if depth == 16:
        pixels = pixels.view(">u2").astype(np.uint16)
    return pixels.reshape((height, width) if samples == 1 else (height, width, samples))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _pillow(buf: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(buf))
    arr = np.asarray(img)
    return arr.astype(np.uint16) if img.mode.startswith("I") else arr


def _opencv(buf: bytes) -> np.ndarray:  # OpenCV decodes PNG with libpng
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    return img[..., ::-1] if img.ndim == 3 else img


CASES = {
    "grey8 ramp": np.tile(np.arange(256, dtype=np.uint8), (7, 2)),
    "grey8 noise": np.random.default_rng(1).integers(0, 256, (33, 17), dtype=np.uint8),
    "grey16 extremes": np.array([[0, 65535, 256, 255], [1, 32768, 65534, 4095]], dtype=np.uint16),
    "grey16 noise": np.random.default_rng(2).integers(0, 65536, (19, 23), dtype=np.uint16),
    "rgb8 noise": np.random.default_rng(3).integers(0, 256, (9, 11, 3), dtype=np.uint8),
    "rgb16 noise": np.random.default_rng(4).integers(0, 65536, (5, 6, 3), dtype=np.uint16),
    "one pixel": np.array([[200]], dtype=np.uint8),
}


def _take_route(monkeypatch, function: str, extension: bool) -> None:
    """png.py with its ``function`` from shared/_deflate.c (skipped where it was not built), or
    without it, as an install without a compiler runs."""
    if not extension:
        monkeypatch.setattr(png, function, None)
    elif getattr(png, function) is None:
        pytest.skip("shared/_deflate.c was not built")


@pytest.fixture(params=["one-pass", "zlib-ng"])
def route(request, monkeypatch):
    """Each deflate route png.py can take: shared/_deflate.c, or zlib-ng where it was not built."""
    _take_route(monkeypatch, "rle_deflate", request.param == "one-pass")
    return request.param


@pytest.mark.parametrize("name", list(CASES))
def test_independent_readers_decode_the_same_pixels(name, route):
    img = CASES[name]
    buf = png.encode_png(img, {"Software": "test", "dicomfleet:offset": "32768"})
    readers = [_reference_decode, _opencv]
    if name != "rgb16 noise":  # Pillow has no 16-bit RGB mode: it reads such files as 8-bit
        readers.append(_pillow)
    for reader in readers:
        got = reader(buf)
        assert got.dtype == img.dtype and np.array_equal(got, img), reader.__name__


def test_chunks_ihdr_text_and_crcs():
    buf = png.encode_png(CASES["grey16 noise"], {"Software": "dicomfleet 0.1.0", "dicomfleet:offset": "0"})
    chunks = _chunks(buf)
    assert [k for k, _ in chunks] == [b"IHDR", b"tEXt", b"tEXt", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (23, 19, 16, 0, 0, 0, 0)
    assert chunks[1][1] == b"Software\0dicomfleet 0.1.0"
    assert Image.open(io.BytesIO(buf)).text == {"Software": "dicomfleet 0.1.0", "dicomfleet:offset": "0"}
    assert chunks[-1][1] == b""


@pytest.fixture(params=["c", "numpy"])
def sub_route(request, monkeypatch):
    """Each way png.py Sub-filters rows: shared/_deflate.c's one pass, or numpy's."""
    _take_route(monkeypatch, "sub_filter", request.param == "c")
    return request.param


def test_rows_are_sub_filtered(sub_route):
    rows = png.filtered_rows(np.array([[10, 12, 9], [255, 0, 1]], dtype=np.uint8))
    assert rows.tolist() == [[1, 10, 2, 253], [1, 255, 1, 1]]
    rows16 = png.filtered_rows(np.array([[0x0102, 0x0304]], dtype=np.uint16))
    assert rows16.tolist() == [[1, 0x01, 0x02, 0x02, 0x02]]  # big-endian bytes, 2 bytes per pixel
    rgb16 = png.filtered_rows(np.array([[[1, 2, 3], [0x0104, 0x0202, 0xFFFF]]], dtype=np.uint16))
    assert rgb16.tolist() == [[1, 0, 1, 0, 2, 0, 3, 1, 3, 2, 0, 0xFF, 0xFC]]  # 6 bytes a pixel


def test_the_c_filter_gives_numpys_rows_for_every_layout(monkeypatch):
    """shared/_deflate.c's Sub filter (the byte swap of 16-bit samples included) against numpy's,
    over grey and RGB, 8 and 16 bits, odd widths, one pixel; a view that is not C-contiguous takes
    numpy's route and gives the same rows too."""
    if png.sub_filter is None:
        pytest.skip("shared/_deflate.c was not built")
    rng = np.random.default_rng(9)
    images = [rng.integers(0, 256, (33, 17), dtype=np.uint8), rng.integers(0, 65536, (19, 23)).astype(np.uint16),
              rng.integers(0, 256, (7, 9, 3), dtype=np.uint8), rng.integers(0, 65536, (5, 6, 3)).astype(np.uint16),
              np.array([[5]], np.uint16), rng.integers(0, 65536, (40, 30)).astype(np.uint16).T]
    ours = [png.filtered_rows(img) for img in images]
    monkeypatch.setattr(png, "sub_filter", None)
    for img, rows in zip(images, ours):
        assert np.array_equal(rows, png.filtered_rows(img)), (img.dtype, img.shape)


@pytest.mark.parametrize("img", [np.zeros((4, 4), np.int16), np.zeros((4, 4), np.float32),
                                 np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4), np.uint8)])
def test_unencodable_arrays_are_refused(img):
    with pytest.raises(ValueError):
        png.encode_png(img)


def test_ct_slice_size_close_to_libpng(tmp_path, route):
    """On a real-size CT slice the file stays within 10% of libpng's at zlib level 1 (8 and 16 bit)."""
    import pydicom

    ds = pydicom.dcmread(write_series(tmp_path, slices=1)[0])
    stored = ds.pixel_array
    grey8 = np.clip((stored.astype(np.int32) - 1024 - 40 + 200) * 255 // 400, 0, 255).astype(np.uint8)
    for img in (grey8, stored):
        ours = png.encode_png(img)
        ref = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
        assert len(ours) <= 1.10 * len(ref), (img.dtype, len(ours), len(ref))
        assert np.array_equal(_opencv(ours), img) and np.array_equal(_pillow(ours), img)


@pytest.mark.skipif(shutil.which("pngfix") is None, reason="libpng's pngfix (libpng-tools) not installed")
def test_libpng_pngfix_accepts_the_file(tmp_path, route):
    path = tmp_path / "x.png"
    path.write_bytes(encode_output_png(CASES["rgb8 noise"], {"dicomfleet:offset": "0"}))
    done = subprocess.run(["pngfix", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_output_png_keeps_rgb_order_and_software_text():
    img = CASES["rgb8 noise"]
    buf = encode_output_png(img)
    assert np.array_equal(_pillow(buf), img)
    assert Image.open(io.BytesIO(buf)).text["Software"].startswith("dicomfleet ")


def _recrc(buf: bytearray, kind: bytes) -> bytes:
    """Fix the CRC of chunk ``kind`` after its payload was altered (a corruption CRCs cannot see)."""
    pos = buf.index(kind) - 4
    (length,) = struct.unpack(">I", buf[pos:pos + 4])
    body = bytes(buf[pos + 4:pos + 8 + length])
    buf[pos + 8 + length:pos + 12 + length] = struct.pack(">I", zlib.crc32(body))
    return bytes(buf)


def test_check_png_accepts_every_case_and_names_what_is_wrong():
    for img in CASES.values():
        assert png.check_png(png.encode_png(img, {"Software": "t"}), img) is None
    img = CASES["grey8 noise"]
    good = png.encode_png(img)
    flipped = bytearray(good)
    flipped[good.index(b"IDAT") + 20] ^= 0x01
    assert png.check_png(bytes(flipped), img) == "IDAT chunk CRC mismatch"
    assert "IDAT" in png.check_png(_recrc(flipped, b"IDAT"), img)
    other = img.copy()
    other[5, 5] ^= 0x80
    assert png.check_png(good, other) == "IDAT does not hold the image's rows"
    assert png.check_png(good, img.T.copy()).startswith("IHDR")
    assert png.check_png(good, img.astype(np.uint16)).startswith("IHDR")
    assert png.check_png(good[:-12], img) == "chunks are not IHDR … IEND"
    assert png.check_png(b"GIF89a", img) == "no PNG signature"


def _with_idat(buf: bytes, stream: bytes) -> bytes:
    """``buf`` with its IDAT payload replaced by ``stream`` (length and CRC made valid)."""
    pos = buf.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", buf[pos:pos + 4])
    body = b"IDAT" + stream
    return buf[:pos] + struct.pack(">I", len(stream)) + body + \
        struct.pack(">I", zlib.crc32(body)) + buf[pos + 12 + length:]


def test_check_png_refuses_streams_of_the_wrong_length_or_checksum():
    """Valid chunks around a zlib stream that is short, long or fails its Adler-32."""
    img = CASES["grey8 noise"]
    rows = png.filtered_rows(img).tobytes()
    good = png.encode_png(img)
    assert png.check_png(_with_idat(good, zlib.compress(rows)), img) is None  # any valid stream
    short = png.check_png(_with_idat(good, zlib.compress(rows[:-1])), img)
    assert short == f"IDAT inflates to {len(rows) - 1} bytes, not {len(rows)}"
    long = png.check_png(_with_idat(good, zlib.compress(rows + b"\0")), img)
    assert long == f"IDAT does not inflate to {len(rows)} bytes (Decompression failed)"
    stream = bytearray(zlib.compress(rows))
    stream[-1] ^= 0x01  # the Adler-32 of the rows
    assert png.check_png(_with_idat(good, bytes(stream)), img).startswith("IDAT does not inflate")


def test_check_png_reads_the_stream_across_idat_chunks_and_needs_one():
    """libpng and others split the stream over several IDATs (8 kB each); they are one stream.
    Without any IDAT there is nothing to inflate."""
    img = CASES["grey8 noise"]
    good = png.encode_png(img)
    pos = good.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", good[pos:pos + 4])
    stream = good[pos + 8:pos + 8 + length]
    pieces = [stream[i:i + 100] for i in range(0, len(stream), 100)]
    assert len(pieces) > 2
    split = good[:pos] + b"".join(png.chunk(b"IDAT", p) for p in pieces) + good[pos + 12 + length:]
    assert png.check_png(split, img) is None
    swapped = good[:pos] + b"".join(png.chunk(b"IDAT", p) for p in [pieces[1], pieces[0], *pieces[2:]]) + \
        good[pos + 12 + length:]
    assert png.check_png(swapped, img).startswith("IDAT does not inflate")
    none = good[:pos] + good[pos + 12 + length:]
    assert png.check_png(none, img).startswith("IDAT does not inflate")


def test_verify_lossless_refuses_a_png_that_does_not_hold_the_pixels():
    from shared.errors import VerificationError
    from shared.verify import verify_lossless

    img = CASES["grey16 noise"]
    assert verify_lossless("png16", png.encode_png(img), img) == "lossless"
    with pytest.raises(VerificationError, match=r"png16 output does not decode back .*IDAT does not hold"):
        verify_lossless("png16", png.encode_png(img), img ^ np.uint16(1))


_DETERMINISM_PROBE = """
import hashlib, sys
import numpy as np
from shared import png
rng = np.random.default_rng(2026)
junk = [rng.integers(0, 4096, (int(h), int(w))).astype(np.uint16) for h, w in rng.integers(8, 600, (40, 2))]
for j in junk:  # leave the allocator and any compressor state dirty, as a long-lived worker would
    png.encode_png(j)
yy, xx = np.mgrid[0:256, 0:256]
img = ((np.sin(xx / 9) + np.cos(yy / 7)) * 900 + 2048 + rng.normal(0, 30, (256, 256))).clip(0, 4095)
u16 = img.astype(np.uint16)
u8 = (u16 >> 4).astype(np.uint8)
print(hashlib.sha256(png.encode_png(u8) + png.encode_png(u16)).hexdigest())
"""


def test_same_pixels_give_the_same_bytes_in_every_process():
    """Outputs are byte-identical wherever they are made: a fresh process, a process that has
    compressed other images first, and this long-lived test process all write the same PNG bytes
    (a redelivered fleet job rewrites exactly what the first delivery wrote)."""
    import hashlib
    import sys

    fresh = {subprocess.run([sys.executable, "-c", _DETERMINISM_PROBE], capture_output=True, text=True,
                            check=True).stdout.strip() for _ in range(2)}
    assert len(fresh) == 1
    rng = np.random.default_rng(2026)
    [rng.integers(0, 4096, (int(h), int(w))) for h, w in rng.integers(8, 600, (40, 2))]
    yy, xx = np.mgrid[0:256, 0:256]
    img = ((np.sin(xx / 9) + np.cos(yy / 7)) * 900 + 2048 + rng.normal(0, 30, (256, 256))).clip(0, 4095)
    u16 = img.astype(np.uint16)
    here = hashlib.sha256(png.encode_png((u16 >> 4).astype(np.uint8)) + png.encode_png(u16)).hexdigest()
    assert fresh == {here}


@pytest.mark.parametrize("route, u8_digest, u16_digest", [
    ("one-pass", "95ed48e6d58e37fcdf8ec1fccc74e2319fbd818f58558d40ee226d22cb8d67e4",
     "246aef2c84281ffe665d56d49a6a61cf91f0042e7a1b0e793c14022287ed009e"),
    ("zlib-ng", "4e5b9525a0d059c45b36f3fa820a870657b2736ecc026afd83a04b0d1150b292",
     "4ab8116836e25ae16264f0b8fee4dd6b7bc4614d07887e6736b7a28a737e1f70"),
])
def test_the_pinned_encoder_writes_the_bytes_it_wrote_when_it_was_chosen(route, u8_digest, u16_digest,
                                                                          monkeypatch):
    """The PNG bytes of a fixed image, pinned for each deflate route: shared/_deflate.c's stream
    depends on the input only; zlib-ng's run-length stream on its version (pyproject.toml pins it),
    not on the CPU or the process. A change of either, or a machine whose code path found different
    runs, fails here before a fleet writes two versions of a file."""
    import hashlib

    _take_route(monkeypatch, "rle_deflate", route == "one-pass")
    yy, xx = np.mgrid[0:512, 0:512].astype(np.int64)
    u16 = (((xx * 7919 + yy * 104729) ^ (xx * yy)) % 4096).astype(np.uint16)
    u16[100:300, 50:400] = 0  # a run of air, as CT slices have
    u8 = (u16 >> 4).astype(np.uint8)
    assert hashlib.sha256(png.encode_png(u8)).hexdigest() == u8_digest
    assert hashlib.sha256(png.encode_png(u16)).hexdigest() == u16_digest
