"""GDCM, the last-resort decoder, run in a child process.

pydicom tries GDCM first for JPEG, JPEG-LS and JPEG 2000, and GDCM's C++ aborts the whole
process on some corrupt JPEG data (``terminate called after ... gdcm::Exception``): in a pool
or Celery worker that loses every instance in hand. So GDCM leaves the in-process plugin lists
(pylibjpeg and Pillow decode everything the bundled test files hold) and serves as the fallback
the design asks for, in a child whose crash costs one instance and yields a reason.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

from importlib.util import find_spec

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.pixels.decoders import gdcm as gdcm_plugin
from pydicom.uid import AllTransferSyntaxes

_PLUGIN = "gdcm"
_TIMEOUT = 300.0  # seconds; the header was validated first, so a long decode is a hang
_CHILD = """\
import io, sys, warnings
import numpy as np
from pydicom import dcmread
from pydicom.pixels import pixel_array
warnings.simplefilter("ignore")
try:
    arr = pixel_array(dcmread(io.BytesIO(sys.stdin.buffer.read())), decoding_plugin="gdcm")
except Exception as err:
    sys.stderr.write("\\n" + " ".join(str(err).split()).split("gdcm: ", 1)[-1] + "\\n")
    sys.exit(3)
np.save(sys.stdout.buffer, np.ascontiguousarray(arr), allow_pickle=False)
"""


def _take_gdcm_out_of_process() -> frozenset[str]:
    """Remove GDCM from pydicom's in-process decoders; the transfer syntaxes the child serves.

    Usually GDCM was never loaded here (``shared/__init__.py`` marks it absent), so what it
    serves is pydicom's own table for its GDCM plugin, when python-gdcm is installed."""
    served = set(gdcm_plugin.DECODER_DEPENDENCIES) if find_spec("_gdcm") is not None else set()
    for uid in AllTransferSyntaxes:
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            continue
        if _PLUGIN in decoder.available_plugins:
            decoder.remove_plugin(_PLUGIN)
            served.add(str(uid))
    return frozenset(str(uid) for uid in served)


#: transfer syntaxes the child can try (empty when python-gdcm is not installed)
GDCM_SYNTAXES = _take_gdcm_out_of_process()


def _child_env() -> dict[str, str]:
    """The child's environment: what an interpreter and its libraries need to start, none of the
    fleet's secrets (keys, passwords), which a decoder of untrusted data has no use for."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DICOMFLEET_") and not k.endswith("_KEY")}


class ChildDecodeError(Exception):
    """The child could not decode: its one-line reason."""


def decode_in_child(ds: Dataset, *, timeout: float = _TIMEOUT) -> np.ndarray:
    """The pixel array GDCM decodes from ``ds``, computed in a separate interpreter."""
    buf = io.BytesIO()
    try:
        ds.save_as(buf)
    except Exception as err:  # noqa: BLE001 - whatever stops re-encoding is the dataset's fault
        raise ChildDecodeError(f"gdcm: the dataset cannot be re-encoded for it ({err})") from err
    try:
        run = subprocess.run([sys.executable, "-c", _CHILD], input=buf.getvalue(), capture_output=True,
                             timeout=timeout, check=False, env=_child_env())
    except subprocess.TimeoutExpired as err:
        raise ChildDecodeError(f"gdcm: no result within {timeout:g} s") from err
    if run.returncode == 0:
        return np.load(io.BytesIO(run.stdout), allow_pickle=False)
    if run.returncode == 3:
        lines = run.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ChildDecodeError(f"gdcm: {lines[-1] if lines else 'failed'}")
    if run.returncode < 0:
        raise ChildDecodeError(f"gdcm: crashed ({signal.Signals(-run.returncode).name})")
    raise ChildDecodeError(f"gdcm: exited with status {run.returncode}")
