"""PHI planting for the de-identification tests: a distinct value in every Table E.1-1 attribute
that can hold text (plus dates, times, UIDs), in private tags, overlays, curves and nested
sequences, so that a leak anywhere can be traced to the attribute it came from."""
from __future__ import annotations

import random
import string

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.deid.profile import load_table

#: VRs whose values can carry identifying text (AS cannot hold a distinct string; numbers skip).
TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "CS", "UR"})
BINARY_VRS = frozenset({"OB", "OW", "UN"})
#: The identity of an instance: kept by `plant(keep_identity=True)` so that a series stays one
#: series; their original values are searched for like any planted string.
IDENTITY = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def nonce(rng: random.Random, n: int = 6) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(n))


class Planter:
    """Hands out distinct values per VR and remembers each one with where it was planted."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tag = nonce(self.rng)
        self.count = 0
        self.planted: dict[str, str] = {}  # value → where

    def value(self, vr: str, where: str) -> str:
        self.count += 1
        i = self.count
        if vr == "DA":
            v = f"19{self.rng.randrange(10, 99)}{self.rng.randrange(1, 13):02d}{self.rng.randrange(1, 29):02d}"
        elif vr == "TM":
            v = f"{self.rng.randrange(24):02d}{self.rng.randrange(60):02d}{self.rng.randrange(60):02d}.{i:06d}"
        elif vr == "DT":
            v = f"19{self.rng.randrange(10, 99)}0{self.rng.randrange(1, 10)}1{self.rng.randrange(10)}101112.{i:06d}"
        elif vr == "UI":
            v = f"1.2.826.0.1.3680043.99.{self.rng.randrange(10**8)}.{i}"
        else:
            v = f"PHI{i:03d}{self.tag}"
        if v in self.planted or v == "19000101":
            return self.value(vr, where)
        self.planted[v] = where
        return v


def plant(ds: Dataset, planter: Planter, *, keep_identity: bool = False) -> None:
    """Plant PHI in every Table E.1-1 attribute that can hold it, plus private tags, overlay and
    curve groups, and nested sequences (standard and private) holding table attributes."""
    skip = {ds.data_element(k).tag for k in IDENTITY if k in ds} if keep_identity else set()
    for tag in sorted(load_table().basic):
        if tag >> 16 < 0x0008 or tag in skip:
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "LO"  # newer than pydicom's dictionary: written as LO
        where = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if vr == "SQ":
            ds.add(DataElement(tag, "SQ", Sequence([_item(planter, where)])))
        elif vr in TEXT_VRS or vr in ("DA", "TM", "DT", "UI"):
            ds.add(DataElement(tag, vr, planter.value(vr, where)))
        elif vr in BINARY_VRS:
            ds.add(DataElement(tag, vr, planter.value("LO", where).encode() + b"\0"))
    ds.add_new(0x60004000, "LT", planter.value("LT", "overlay comments"))
    ds.add_new(0x50002500, "LO", planter.value("LO", "curve label"))
    block = ds.private_block(0x0011, "PHI PRIVATE " + planter.tag, create=True)
    block.add_new(0x01, "LO", planter.value("LO", "private LO"))
    block.add_new(0x02, "SQ", Sequence([_item(planter, "private SQ")]))
    # a standard sequence outside the table, holding table attributes two levels down
    ds.add_new(0x00082218, "SQ", Sequence([_item(planter, "AnatomicRegionSequence")]))


def _item(planter: Planter, where: str) -> Dataset:
    item = Dataset()
    item.PatientName = planter.value("PN", where + " > PatientName")
    item.OtherPatientIDs = planter.value("LO", where + " > OtherPatientIDs")
    item.InstitutionName = planter.value("LO", where + " > InstitutionName")
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = planter.value("UI", where + " > > ReferencedSOPInstanceUID")
    inner.PersonName = planter.value("PN", where + " > > PersonName")
    inner.add_new(0x00191010, "LO", planter.value("LO", where + " > > private"))
    item.ReferencedImageSequence = Sequence([inner])
    return item


def test_planting_covers_every_text_attribute_of_the_table():
    ds = Dataset()
    planter = Planter(1)
    plant(ds, planter)
    table = load_table().basic
    textual = [t for t in table if t >> 16 >= 0x0008 and _vr(t) in TEXT_VRS | {"DA", "TM", "DT", "UI", "SQ"}]
    assert len(textual) > 550
    assert all(t in ds for t in textual)
    assert len(planter.planted) == planter.count  # every value distinct


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "LO"
