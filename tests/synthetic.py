"""Synthetic CT series for tests, the demo and the benchmark.

Anatomy-like HU phantom (air, soft tissue, lungs, ribs, spine, aorta) with Gaussian noise, real
patient geometry (1.25 mm steps along the slice normal), InstanceNumber running *backwards* so that
ordering by file name or number is wrong, two windows, and PHI planted in standard and private
tags so that leak tests have something to find.

usage: python -m tests.synthetic OUTDIR [--slices N] [--size 512] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PHI = {
    "PatientName": "SYNTH^PATIENT^ALPHA",
    "PatientID": "PID-0047-1193",
    "PatientBirthDate": "19570823",
    "AccessionNumber": "ACN77310452",
    "InstitutionName": "Synthetic General Infirmary",
    "ReferringPhysicianName": "REFERRER^ROBIN",
    "OperatorsName": "OPERATOR^OLLIE",
    "StationName": "SYNTH-CT-07",
}
PRIVATE_PHI = "PRIVATE-PHI-SYNTH-5521"


def phantom(size: int, z: float, rng: np.random.Generator) -> np.ndarray:
    """HU values of one axial slice at relative height z in [-1, 1]."""
    yy, xx = np.mgrid[-1.0:1.0:size * 1j, -1.0:1.0:size * 1j]
    hu = np.full((size, size), -1000.0)
    torso = (xx / 0.82) ** 2 + (yy / 0.62) ** 2 < 1.0
    hu[torso] = 35.0
    lung_h = 0.40 - 0.12 * z * z
    for side in (-1, 1):
        lung = ((xx - side * 0.36) / 0.27) ** 2 + ((yy + 0.04) / lung_h) ** 2 < 1.0
        hu[lung] = -840.0
    rib = np.abs(np.hypot(xx / 0.78, yy / 0.58) - 0.95) < 0.025
    hu[rib & (np.sin(12 * np.arctan2(yy, xx) + 4 * z) > 0.1)] = 650.0
    hu[(xx / 0.085) ** 2 + ((yy - 0.43) / 0.085) ** 2 < 1.0] = 950.0  # vertebral body
    hu[((xx + 0.06) / 0.055) ** 2 + ((yy - 0.12) / 0.055) ** 2 < 1.0] = 170.0  # aorta
    return hu + rng.normal(0.0, 12.0, hu.shape)


def make_slice(i: int, n: int, size: int, rng: np.random.Generator, uids: tuple[str, str, str]) -> Dataset:
    study, series, frame_of_ref = uids
    z = -1.0 + 2.0 * i / max(n - 1, 1)
    stored = np.clip(phantom(size, z, rng) + 1024.0, 0, 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_ref
    ds.Modality = "CT"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260302"
    ds.StudyTime = ds.SeriesTime = "084500"
    ds.StudyDescription, ds.SeriesDescription = "CHEST CT", "AXIAL 1.25mm"
    ds.Manufacturer, ds.DeviceSerialNumber = "SynthVendor", "DSN-88412"
    ds.PatientSex, ds.PatientAge = "M", "069Y"
    for key, value in PHI.items():
        setattr(ds, key, value)
    ds.SeriesNumber, ds.InstanceNumber = 2, n - i  # reversed on purpose
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-240.0, -240.0, round(-120.0 + 1.25 * i, 4)]
    ds.SliceThickness, ds.PixelSpacing = 1.25, [480.0 / size, 480.0 / size]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
    ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
    block = ds.private_block(0x0029, "SYNTH PRIVATE", create=True)
    block.add_new(0x10, "LO", PRIVATE_PHI)
    ds.PixelData = stored.tobytes()
    return ds


def write_series(outdir: str | Path, slices: int = 200, size: int = 512, seed: int = 0) -> list[Path]:
    """Write one series; file names run in acquisition order, InstanceNumber backwards."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    uids = (generate_uid(), generate_uid(), generate_uid())
    paths = []
    for i in range(slices):
        path = out / f"slice{i:05d}.dcm"
        make_slice(i, slices, size, rng, uids).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write_series(a.outdir, a.slices, a.size, a.seed)


if __name__ == "__main__":
    main()
