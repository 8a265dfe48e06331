"""The native fast path (shared/native.py) gives pydicom's own arrays, or declines."""
from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest

from shared.dataset import read_dataset
from shared.native import native_pixels
from tests.synthetic import write_series
from tests.conftest import TEST_FILES


def _files():
    return sorted(p for p in TEST_FILES.rglob("*") if p.is_file() and p.stat().st_size < 20_000_000)


def _pydicom_array(ds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_native_path_equals_pydicom_or_declines(path):
    try:
        ds = read_dataset(path.read_bytes())
        expected = _pydicom_array(ds)
    except Exception:
        return  # not an image pydicom decodes; the chain's reasons are pinned elsewhere
    arr = native_pixels(ds)
    if arr is None:
        return
    assert arr.dtype == expected.dtype and arr.shape == expected.shape
    assert np.array_equal(arr, expected)
    assert arr.flags.writeable and arr.flags.c_contiguous


def test_native_path_taken_for_plain_files():
    taken = set()
    for path in _files():
        try:
            ds = read_dataset(path.read_bytes())
        except Exception:
            continue
        if native_pixels(ds) is not None:
            taken.add(path.name)
    # signed 16-bit CT, unsigned MR, 12 of 16 bits, multi-frame 32-bit, implicit VR, 8-bit deflated
    assert {"CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm", "rtdose.dcm",
            "MR_small_implicit.dcm", "image_dfl.dcm"} <= taken


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits,stored", [(16, 12), (8, 6), (8, 8), (32, 20)])
def test_unused_high_bits_corrected_like_pydicom(tmp_path, signed, bits, stored):
    """Garbage in the bits above Bits Stored: masked (unsigned) or sign-extended (signed)."""
    path = write_series(tmp_path, slices=1, size=16)[0]
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = int(signed)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    raw = np.random.default_rng(bits + stored).integers(0, 2 ** bits, (16, 16), dtype=f"u{bits // 8}")
    ds.PixelData = raw.astype(f"<u{bits // 8}").tobytes()
    out = tmp_path / "x.dcm"
    ds.save_as(out)
    ds = read_dataset(out.read_bytes())
    arr = native_pixels(ds)
    assert arr is not None and np.array_equal(arr, _pydicom_array(ds))
    assert arr.dtype == np.dtype(f"{'iu'[not signed]}{bits // 8}")
