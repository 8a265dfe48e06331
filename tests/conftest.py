"""Shared fixtures: pydicom's bundled test files, converted once per session with every format."""
from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from producer.scan import read_instance
from shared.chain import convert_instance, instance_task
from shared.options import ConvertOptions

#: pydicom's bundled test files (in the wheel; never the network downloads of pydicom.data)
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
ALL_FORMATS = ("png", "png16", "jpeg", "tiff", "npy")  # the per-instance formats of issue 2


def bundled(name: str) -> Path:
    """A bundled test file by its path relative to TEST_FILES."""
    path = TEST_FILES / name
    assert path.is_file(), f"{name} is not among pydicom's bundled test files"
    return path


def header(name: str) -> pydicom.Dataset:
    """A bundled file's header (no pixels), without pydicom's warnings about odd test files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(TEST_FILES / name, stop_before_pixels=True)


def image_files() -> list[str]:
    """Every bundled file the scanner accepts as an image, relative to TEST_FILES, sorted."""
    found = []
    for path in sorted(TEST_FILES.rglob("*")):
        if path.is_file() and not isinstance(read_instance(str(path)), str):
            found.append(path.relative_to(TEST_FILES).as_posix())
    return found


@dataclass(frozen=True)
class Converted:
    """One test file converted by the chain: its manifest record and where its outputs are."""

    name: str
    path: Path
    record: dict
    dest: Path

    @property
    def error(self) -> dict | None:
        return self.record["error"]

    def outputs(self, fmt: str) -> list[dict]:
        return [o for o in self.record["outputs"] if o["format"] == fmt]

    def output_path(self, entry: dict) -> Path:
        return self.dest / entry["path"]


@pytest.fixture(scope="session")
def converted_test_files(tmp_path_factory) -> dict[str, Converted]:
    """Every bundled image through `convert_instance` with all five formats, once per session."""
    dest = tmp_path_factory.mktemp("pydicom-test-files")
    opts = ConvertOptions(formats=ALL_FORMATS, deid=False).to_json()
    results = {}
    for name in image_files():
        prefix = name.replace("/", "_")
        task = instance_task(str(TEST_FILES / name), 1, prefix, str(dest), opts)
        results[name] = Converted(name, TEST_FILES / name, convert_instance(task), dest)
    yield results
    shutil.rmtree(dest, ignore_errors=True)
