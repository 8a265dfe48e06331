"""The leak test: PHI planted everywhere in real files goes in; not one byte of it comes out.

Every Table E.1-1 attribute that can hold text, dates, times or UIDs gets a distinct value, as do
private tags, overlay and curve groups, nested sequences, the source directory and file names; the
files are pydicom's own test images (several codecs, colour, multi-frame) and a synthetic CT series.
`dicomfleet convert` writes every format with two workers; then every output byte, the decompressed
PNG text chunks, the TIFF tags, the manifests, the output paths and the captured stdout/stderr are
searched for every planted string.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pydicom
import pytest
import tifffile
from pydicom.datadict import tag_for_keyword

from shared.deid.metadata import SAFE_WITH_OPTION
from tests.synthetic import PHI, PRIVATE_PHI, write_series
from tests.test_deid_plant import IDENTITY, Planter, plant

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
#: Real files covering the codecs and layouts (CT, MR RLE, NM JPEG 2000 SC, RGB RLE 2 frames,
#: US YBR JPEG, CT J2K); SC and US are marked "no burned-in text" so they are not refused.
REAL_FILES = ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm",
              "examples_ybr_color.dcm", "693_J2KI.dcm")
FORMATS = ("png", "png16", "jpeg", "tiff", "npy")
DICOMFLEET = str(Path(sys.executable).parent / "dicomfleet")
KEY = "leak-test-key-0123456789abcdef0123456789"
ALL_RETAINING = ("retain-long-full-dates", "retain-patient-chars", "retain-device-id",
                 "retain-institution-id", "retain-safe-private", "clean-descriptors")


def _build_sources(root: Path) -> tuple[Path, dict[str, str]]:
    """Write the planted sources; return their folder and every string that must not come out."""
    secrets: dict[str, str] = {}
    folder_phi, file_phi = "SRCDIR-PHI-QWXZ-Jones^Mary", "FILENAME-PHI-KPLM"
    src = root / folder_phi
    src.mkdir(parents=True)
    secrets[folder_phi] = "source folder name"
    secrets[file_phi] = "source file name"
    for n, name in enumerate(REAL_FILES):
        ds = pydicom.dcmread(TEST_FILES / name)
        planter = Planter(100 + n)
        plant(ds, planter)
        ds.BurnedInAnnotation = "NO"
        ds.save_as(src / f"{file_phi}-{n}.dcm", enforce_file_format=True)
        secrets.update({v: f"{name} {w}" for v, w in planter.planted.items()})
    planter = Planter(999)  # one patient: the same planted values in every slice
    for path in write_series(root / "synthetic", slices=5, size=64, seed=2):
        ds = pydicom.dcmread(path)
        secrets.update({str(ds.get(k)): f"synthetic {k}" for k in IDENTITY})
        plant(ds, planter, keep_identity=True)
        ds.save_as(src / f"{file_phi}-{path.name}", enforce_file_format=True)
    secrets.update({v: f"synthetic {w}" for v, w in planter.planted.items()})
    secrets.update({str(v): f"synthetic constant {k}" for k, v in PHI.items()})
    secrets[PRIVATE_PHI] = "synthetic private tag"
    return src, secrets


def _png_texts(data: bytes) -> list[bytes]:
    """The decompressed text of every tEXt/zTXt/iTXt chunk."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"tEXt":
            out.append(body)
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            out.append(key + b"\0" + zlib.decompress(rest[1:]))
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _tkey, _, text = rest.partition(b"\0")
            out.append(key + b"\0" + (zlib.decompress(text) if compressed else text))
        pos += 12 + length
    return out


def _tiff_tags(path: Path) -> list[bytes]:
    with tifffile.TiffFile(path) as tif:
        return [f"{tag.name}={tag.value!r}".encode() for page in tif.pages for tag in page.tags]


def _blobs(out: Path, logs: bytes) -> list[tuple[str, bytes]]:
    """Everything a user or a downstream system could read from the run."""
    blobs = [("stdout/stderr", logs)]
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        data = path.read_bytes()
        blobs += [(f"path {rel}", rel.encode()), (rel, data)]
        if path.suffix == ".png":
            blobs += [(f"{rel} text chunk", t) for t in _png_texts(data)]
        if path.suffix == ".tiff":
            blobs += [(f"{rel} tag", t) for t in _tiff_tags(path)]
    return blobs


_PRINTABLE = re.compile(rb"[\x20-\x7e]{8,}")
_HEX = b"0123456789abcdef."


def _hits(secrets: dict[str, str], blobs: list[tuple[str, bytes]]) -> list[str]:
    """Where any secret occurs, case-insensitively. Every secret is at least 8 printable bytes, so
    only printable runs are searched, through an index of the secrets' first 8 bytes (one pass per
    blob instead of one per secret). Digit-only secrets (dates, UIDs) need boundaries, so that a
    planted date cannot 'match' inside a SHA-256 hex digest."""
    index: dict[bytes, list[tuple[bytes, str]]] = {}
    for value in secrets:
        needle = value.lower().encode()
        assert len(needle) >= 8, value
        index.setdefault(needle[:8], []).append((needle, value))
    found = []
    for name, blob in blobs:
        for word in _PRINTABLE.findall(blob):
            word = word.lower()
            for i in range(len(word) - 7):
                for needle, value in index.get(word[i:i + 8], ()):
                    if not word.startswith(needle, i):
                        continue
                    end = i + len(needle)
                    if value.replace(".", "").isdigit() and (
                            (i and word[i - 1] in _HEX) or (end < len(word) and word[end] in _HEX[:-1])):
                        continue
                    found.append(f"{value!r} ({secrets[value]}) in {name}")
    return found


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    src, secrets = _build_sources(root)
    return root, src, secrets


def _convert(root: Path, src: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMFLEET_")}
    env.update(DICOMFLEET_DEID_KEY=KEY, XDG_CONFIG_HOME=str(root / "config"), COLUMNS="200")
    # the SSIM floor is not this test's business: small noisy bundled images fall below it at q95
    cmd = [DICOMFLEET, "convert", str(src), "--out", str(out), "--workers", "2", "--ssim-threshold", "0"]
    for fmt in FORMATS:
        cmd += ["--format", fmt]
    for option in options:
        cmd += ["--deid-option", option]
    return subprocess.run(cmd, env=env, capture_output=True, cwd=Path(__file__).parent.parent, timeout=300)


@pytest.mark.parametrize("options", [(), ALL_RETAINING], ids=["basic", "all-retaining-options"])
def test_no_planted_phi_in_any_output_byte(planted, tmp_path, options):
    root, src, secrets = planted
    out = tmp_path / "out"
    run = _convert(root, src, out, *options)
    logs = run.stdout + run.stderr
    assert run.returncode == 0, logs.decode(errors="replace")
    manifests = sorted(out.rglob("manifest.json"))
    assert len(manifests) == len(REAL_FILES) + 1
    formats_seen = set()
    for path in manifests:
        manifest = json.loads(path.read_text())
        assert manifest["deidentified"] is True and manifest["counts"]["failed"] == 0
        assert manifest["deidentification"]["options"] == list(options)
        formats_seen |= {o["format"] for i in manifest["instances"] for o in i["outputs"]}
        study, series = path.parent.relative_to(out).parts
        assert re.fullmatch(r"2\.25\.\d+", study) and re.fullmatch(r"2\.25\.\d+", series)
    assert formats_seen == set(FORMATS)
    assert len(secrets) > 4000
    assert _hits(_not_kept_on_purpose(secrets, options), _blobs(out, logs)) == []


def _not_kept_on_purpose(secrets: dict[str, str], options: tuple[str, ...]) -> dict[str, str]:
    """The secrets less the top-level attributes that these options keep on purpose *and* the
    output metadata whitelist lets be embedded (e.g. Device Serial Number under retain-device-id):
    with no option, every secret."""
    kept = {f" ({t >> 16:04X},{t & 0xFFFF:04X})" for keyword, opts in SAFE_WITH_OPTION.items()
            if not opts.isdisjoint(options) for t in [tag_for_keyword(keyword)]}
    return {v: w for v, w in secrets.items() if not any(w.endswith(k) for k in kept)}


def test_the_search_finds_what_it_is_looking_for(planted, tmp_path):
    """The leak test's own control: without de-identification the same search finds PHI."""
    root, src, secrets = planted
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMFLEET_")}
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(next(src.glob("*slice00000.dcm")), one / "x.dcm")
    out = tmp_path / "out"
    run = subprocess.run([DICOMFLEET, "convert", str(one), "--out", str(out),
                          "--no-deid", "--format", "png"], env=env, capture_output=True, timeout=120,
                         cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    hits = _hits(secrets, _blobs(out, run.stdout + run.stderr))
    assert any("synthetic StudyInstanceUID" in h for h in hits)  # identifiable output paths
    png = next(out.rglob("*.png")).read_bytes()
    assert _png_texts(png) and _hits({"dicomfleet": "x"}, [("p text", _png_texts(png)[0])])


def test_the_search_itself():
    noise = bytes(range(256)) * 4
    assert len(_hits({"PHI001ABCDEFG": "x"}, [("bin", noise + b"zzphi001abcdefgzz" + noise)])) == 1
    assert _hits({"19570823": "date"}, [("m.json", b'"sha256": "ab19570823cd"')]) == []
    assert len(_hits({"19570823": "date"}, [("m.json", b'"date": "19570823"')])) == 1
    assert _hits({"1.2.826.0.1.9": "uid"}, [("log", b"1.2.826.0.1.99")]) == []
