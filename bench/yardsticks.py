"""Yardsticks written in the harness: the floor and the plain pydicom + Pillow loop.

The floor is only the unavoidable library calls for each output, nothing else: read the bytes,
parse, one LUT (window 1 of the file, as DCMTK ``+Wi 1``), encode, SHA-256, write. Its 8-bit PNGs
hold the same pixels as the project's (tests/test_bench.py checks it).

usage: python -m bench.yardsticks floor|naive IN OUT [--format png|png16|jpeg|tiff|png+tiff]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os

FLOOR_FORMATS = ("png", "png16", "jpeg", "tiff", "png+tiff")


def _pixels(ds):
    """Uncompressed 16-bit: a view of the bytes; compressed: the decoder, as anyone would."""
    import numpy as np

    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return ds.pixel_array
    return np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)


def _window_lut(ds):
    import numpy as np

    c, w = float(ds.WindowCenter[0]), float(ds.WindowWidth[0])
    hu = np.arange(65536, dtype=np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return np.clip(((hu - (c - 0.5)) / (w - 1) + 0.5) * 255, 0, 255).astype(np.uint8)


def floor(src: str, dst: str, fmt: str = "png", part: tuple[int, int] = (1, 1)) -> int:
    """Convert every file in ``src`` (with ``part`` (k, n): every n-th from the k-th, so that n
    processes share a series); returns the number converted."""
    import cv2
    import pydicom

    os.makedirs(dst, exist_ok=True)
    kinds = fmt.split("+")
    lut = None
    names = sorted(os.listdir(src))[part[0] - 1::part[1]]
    for name in names:
        ds = pydicom.dcmread(os.path.join(src, name))
        px = _pixels(ds)
        outs: list[tuple[str, bytes]] = []
        if "png" in kinds or "jpeg" in kinds:
            if lut is None:
                lut = _window_lut(ds)
            img = lut[px]
            if "png" in kinds:
                outs.append(("png", cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()))
            if "jpeg" in kinds:
                outs.append(("jpg", cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()))
        if "png16" in kinds:
            outs.append(("u16.png", cv2.imencode(".png", px, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()))
        if "tiff" in kinds:
            import tifffile

            buf = io.BytesIO()
            tifffile.imwrite(buf, px, photometric="minisblack")
            outs.append(("tiff", buf.getvalue()))
        for ext, data in outs:
            hashlib.sha256(data).hexdigest()
            with open(os.path.join(dst, f"{name}.{ext}"), "wb") as fh:
                fh.write(data)
    return len(names)


def naive(src: str, dst: str) -> int:
    """The usual user script: pydicom's own LUT functions, min-max scaling, Pillow, one file at a time."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    os.makedirs(dst, exist_ok=True)
    names = sorted(os.listdir(src))
    for name in names:
        ds = pydicom.dcmread(os.path.join(src, name))
        arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0)
        lo, hi = float(arr.min()), float(arr.max())
        img = ((arr - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8)
        out = os.path.join(dst, name + ".png")
        Image.fromarray(img).save(out)
        with open(out, "rb") as fh:
            hashlib.sha256(fh.read()).hexdigest()
    return len(names)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=("floor", "naive"))
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--format", default="png", choices=FLOOR_FORMATS)
    ap.add_argument("--part", default="1/1", help="K/N: the floor's share of N processes")
    a = ap.parse_args(argv)
    k, _, n = a.part.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        ap.error(f"--part: expected K/N with 1 <= K <= N, got {a.part!r}")
    if a.which == "floor":
        floor(a.src, a.dst, a.format, (int(k), int(n)))
    else:
        naive(a.src, a.dst)


if __name__ == "__main__":
    main()
