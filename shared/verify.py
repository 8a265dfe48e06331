"""Verification of every output: hashes, lossless round trips, SSIM for lossy encodings."""
from __future__ import annotations

import io
import struct

import numpy as np

from . import png
from .errors import VerificationError
from .runtime import opencv

try:
    from . import _ssim
except ImportError:  # not built (no compiler at install): OpenCV's blurs and numpy, the same score to 1e-12
    _ssim = None

#: How `ssim` runs here: "one-pass" (shared/_ssim.c) or "opencv"
SSIM_ROUTE = "opencv" if _ssim is None else "one-pass"


def decode_png(buf: bytes) -> np.ndarray:
    cv2 = opencv()
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise VerificationError("PNG output does not decode")
    return img[..., ::-1] if img.ndim == 3 else img


def decode(fmt: str, buf: bytes) -> np.ndarray:
    """Read an output back with an independent reader, as a user would."""
    if fmt in ("png", "png16"):
        return decode_png(buf)
    if fmt == "tiff":
        import tifffile  # imported on first use, like the encoder

        return tifffile.imread(io.BytesIO(buf))
    if fmt == "npy":
        return np.load(io.BytesIO(buf), allow_pickle=False)
    if fmt == "jpeg":
        cv2 = opencv()
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise VerificationError("JPEG output does not decode")
        return img[..., ::-1] if img.ndim == 3 else img
    raise ValueError(f"unknown format {fmt!r}")


#: TIFF field types (TIFF 6.0, section 2) this check reads: SHORT and LONG, little-endian
_TIFF_INTS = {3: "<H", 4: "<I"}
#: SampleFormat (339): unsigned and signed integers, by numpy's kind
_SAMPLE_FORMAT = {"u": 1, "i": 2}


def _tiff_fields(buf: bytes) -> dict[int, tuple[int, ...]] | None:
    """The integer fields of a classic little-endian TIFF's only IFD, by tag; None for any other
    layout (big-endian, BigTIFF, several pages, an IFD outside the file)."""
    if len(buf) < 8 or buf[:4] != b"II*\0":
        return None
    (ifd,) = struct.unpack_from("<I", buf, 4)
    if ifd + 2 > len(buf):
        return None
    (count,) = struct.unpack_from("<H", buf, ifd)
    end = ifd + 2 + 12 * count
    if end + 4 > len(buf) or struct.unpack_from("<I", buf, end)[0] != 0:  # one page only
        return None
    fields = {}
    for pos in range(ifd + 2, end, 12):
        tag, kind, n = struct.unpack_from("<HHI", buf, pos)
        fmt = _TIFF_INTS.get(kind)
        if fmt is None:
            continue  # text and rationals (Software, resolution): not the pixels' business
        size = struct.calcsize(fmt) * n
        at = pos + 8 if size <= 4 else struct.unpack_from("<I", buf, pos + 8)[0]
        if at + size > len(buf):
            return None
        fields[tag] = struct.unpack_from(f"<{n}{fmt[1]}", buf, at)
    return fields


def tiff_holds(buf: bytes, expected: np.ndarray) -> bool:
    """True when ``buf`` is a single-page, one-sample, uncompressed little-endian TIFF whose strips
    hold exactly ``expected``'s values: its fields read as a decoder reads them (dimensions, bits,
    sample format, compression, photometric, planar layout) and its strips compared byte for byte
    with the array, in ~40 µs against tifffile's ~230 µs decode. False when anything differs or the
    layout is another (colour, pages, BigTIFF): `verify_lossless` then decodes it with tifffile."""
    if expected.ndim != 2 or expected.dtype.kind not in _SAMPLE_FORMAT or expected.dtype.byteorder == ">":
        return False
    fields = _tiff_fields(buf)
    if fields is None:
        return False
    height, width = expected.shape
    want = {256: (width,), 257: (height,), 258: (8 * expected.dtype.itemsize,), 259: (1,), 277: (1,),
            284: (1,), 339: (_SAMPLE_FORMAT[expected.dtype.kind],)}
    defaults = {277: (1,), 284: (1,), 339: (1,)}  # samples, planar layout, sample format (TIFF 6.0)
    if any(fields.get(tag, defaults.get(tag)) != value for tag, value in want.items()):
        return False
    if fields.get(262) != (1,) or 273 not in fields or 279 not in fields:
        return False  # BlackIsZero: grey samples as stored (a reader inverts WhiteIsZero)
    offsets, counts = fields[273], fields[279]
    start, total = offsets[0], sum(counts)
    if len(offsets) != len(counts) or total != expected.nbytes or start + total > len(buf) or any(
            offsets[k] + counts[k] != offsets[k + 1] for k in range(len(offsets) - 1)):
        return False  # strips one after another, exactly the array's bytes
    stored = np.frombuffer(buf, expected.dtype.newbyteorder("<"), expected.size, start)
    return bool(np.array_equal(stored, expected.reshape(-1)))


def verify_lossless(fmt: str, buf: bytes, expected: np.ndarray) -> str:
    """Decode and compare exactly; raise VerificationError on any difference.

    PNG is checked by ``png.check_png`` (chunks, CRCs, IHDR, IDAT inflated to exactly the filtered
    rows): the same proof as a full decode at a fifth of its cost. A one-page grey TIFF by
    `tiff_holds` (its fields and strips read directly), anything else TIFF by tifffile's decode.
    """
    if fmt in ("png", "png16"):
        problem = png.check_png(buf, expected)
        if problem:
            raise VerificationError(f"{fmt} output does not decode back to the values written ({problem})")
        return "lossless"
    if fmt == "tiff" and tiff_holds(buf, expected):
        return "lossless"
    got = decode(fmt, buf)
    if got.shape != expected.shape or got.dtype != expected.dtype or not np.array_equal(got, expected):
        raise VerificationError(
            f"{fmt} output does not decode back to the values written "
            f"({got.dtype}{list(got.shape)} vs {expected.dtype}{list(expected.shape)})"
        )
    return "lossless"


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian σ=1.5 window, K1=0.01, K2=0.03) over 8-bit images.

    A row at a time in cache where ``_ssim`` (shared/_ssim.c) was built, 4× faster on a 512²
    slice than four OpenCV blurs of the whole image and numpy's passes, the route otherwise.
    """
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs equal shapes, got {a.shape} and {b.shape}")
    if _ssim is not None and a.dtype == np.uint8 and b.dtype == np.uint8:
        score = _ssim.mean_ssim(np.ascontiguousarray(a), np.ascontiguousarray(b))
        if score is not None:
            return score
    return _ssim_opencv(a, b)


def _ssim_opencv(a: np.ndarray, b: np.ndarray) -> float:
    """`ssim` with OpenCV's blurs and numpy, where ``_ssim`` was not built: the same formula,
    every step in float64 (blurs in float32 were 1e-4 off on flat bright areas, where the
    variances are small differences of large moments)."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    cv2 = opencv()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    # σx² + σy² only appear summed, and a blur is linear: one blur of x² + y², four in all
    mx, my, sxy, ss = blur(x), blur(y), blur(x * y), blur(x * x + y * y)
    mxy, m2 = mx * my, mx * mx + my * my
    return float(np.mean((2 * mxy + c1) * (2 * (sxy - mxy) + c2) / ((m2 + c1) * (ss - m2 + c2))))


def verify_lossy(buf: bytes, reference: np.ndarray) -> float:
    """SSIM of the decoded JPEG against the 8-bit rendering it came from."""
    got = decode("jpeg", buf)
    if got.shape != reference.shape:
        raise VerificationError(f"JPEG output decodes to shape {got.shape}, expected {reference.shape}")
    return round(ssim(got, reference), 6)
