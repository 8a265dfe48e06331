"""Encoders, one per output format: arrays in, bytes out; metadata only from a whitelist."""
from __future__ import annotations

import io

import numpy as np

from . import png
from .errors import UnsupportedError
from .runtime import opencv

from . import __version__

SOFTWARE = f"dicomfleet {__version__}"


def _bgr(img: np.ndarray) -> np.ndarray:
    return img[..., ::-1] if img.ndim == 3 else img


def encode_png(img: np.ndarray, text: dict[str, str] | None = None, chunks: tuple[bytes, ...] = ()) -> bytes:
    """8- or 16-bit PNG (grey or RGB) from our own writer (shared/png.py: zlib-ng run-length, ~8×
    faster than libpng at zlib level 1 on CT rows, same size), with a Software tEXt and any ``text``."""
    return png.encode_png(img, {"Software": SOFTWARE, **(text or {})}, chunks)


def png16_offset(arr: np.ndarray) -> int:
    """The offset that maps a stored dtype onto unsigned 16 bits losslessly (signed → +32768)."""
    if arr.dtype.kind == "i":
        return 1 << (8 * arr.dtype.itemsize - 1)
    return 0


def to_png16(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Stored values as uint16 plus the offset added (integers of at most 16 bits only)."""
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2:
        raise UnsupportedError(
            f"png16 holds integers of at most 16 bits; these pixels are {arr.dtype} "
            "(use --format tiff or npy)")
    offset = png16_offset(arr)
    if offset:
        return (arr.astype(np.int32) + offset).astype(np.uint16), offset
    return arr.astype(np.uint16, copy=False), 0


#: the largest side a baseline JPEG holds (libjpeg's JPEG_MAX_DIMENSION)
JPEG_MAX_SIDE = 65500


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    if max(img.shape[:2]) > JPEG_MAX_SIDE:
        raise UnsupportedError(
            f"JPEG holds at most {JPEG_MAX_SIDE} pixels a side; the display is "
            f"{img.shape[0]} × {img.shape[1]} (use --max-size, or png)")
    cv2 = opencv()
    ok, buf = cv2.imencode(".jpg", _bgr(img), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover
        raise ValueError(f"JPEG encoder refused an array of shape {img.shape}")
    return buf.tobytes()


def encode_tiff(arr: np.ndarray, *, rgb: bool, tags: list[tuple] = ()) -> bytes:
    """Stored values bit-exact with their dtype; frames become pages; ``tags``: tifffile extratags
    (the whitelisted metadata of shared/metadata.py)."""
    import tifffile  # imported on first use: ~20 ms of start-up that png-only runs need not pay

    out = io.BytesIO()
    tifffile.imwrite(out, arr, photometric="rgb" if rgb else "minisblack", software=SOFTWARE,
                     metadata=None, extratags=list(tags))
    return out.getvalue()


def encode_npy(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(arr), allow_pickle=False)
    return out.getvalue()
