"""Conversion parameters: one validated, JSON-serialisable value shared by CLI, pool and workers."""
from __future__ import annotations

import copy
import enum
import math
import os
import re
from dataclasses import asdict, dataclass, field

from .errors import ConfigError

ENV_PREFIX = "DICOMFLEET_"


class Format(str, enum.Enum):
    """Output formats; the value is the CLI spelling and the file extension's stem."""

    PNG = "png"
    PNG16 = "png16"
    JPEG = "jpeg"
    TIFF = "tiff"
    NPY = "npy"
    PDF = "pdf"  # a PDF/A-2b report of the series' key slices (shared/report.py)

    @property
    def extension(self) -> str:
        return {"png16": "u16.png", "jpeg": "jpg"}.get(self.value, self.value)

    @property
    def lossless(self) -> bool:
        return self is not Format.JPEG

    @property
    def rendered(self) -> bool:
        """True when the output is the 8-bit display rendering (window applied)."""
        return self in (Format.PNG, Format.JPEG, Format.PDF)

    @property
    def per_series(self) -> bool:
        """True when the output is made once per series (after its instances), not per instance."""
        return self is Format.PDF


#: Common CT presets, (center, width) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
WINDOW_MODES = ("default", "auto")
_CW = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*$")

DEFAULT_MAX_PIXELS = 1 << 28  # samples per instance (256 Mi: ~512 MiB of 16-bit data)


def parse_window(value: str) -> str | tuple[float, float]:
    """Validate a ``--window`` value: a mode, a preset name, or ``C,W`` with W >= 1."""
    v = value.strip().lower()
    if v in WINDOW_MODES:
        return v
    if v in WINDOW_PRESETS:
        return WINDOW_PRESETS[v]
    m = _CW.match(v)
    if m:
        center, width = float(m.group(1)), float(m.group(2))
        if not (math.isfinite(center) and math.isfinite(width)):  # digits beyond float range
            raise ConfigError(f"window centre and width must be finite numbers, got {value!r}")
        if width < 1:
            raise ConfigError(f"window width must be >= 1, got {value!r}")
        return center, width
    choices = ", ".join([*WINDOW_MODES, *WINDOW_PRESETS, "C,W"])
    raise ConfigError(f"invalid window {value!r}: expected one of {choices}")


@dataclass(frozen=True)
class ConvertOptions:
    """What to produce from each instance; identical on every process that runs the chain."""

    formats: tuple[Format, ...] = (Format.PNG,)
    window: str = "default"
    quality: int = 95
    deid: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: de-identification: PS3.15 option names (shared/deid/profile.py OPTIONS), the burned-in
    #: policy (refuse|mask) with the regions to mask (x, y, w, h in pixels), the encrypted map file
    deid_options: tuple[str, ...] = ()
    burned_in: str = "refuse"
    mask_regions: tuple[tuple[int, int, int, int], ...] = ()
    pseudonym_map: str | None = None
    #: series outputs and display (shared/pixels/orientation.py, report.py, stack.py, qa.py):
    #: radiological|as-stored; longest side of 8-bit outputs; one tiff/npy per series; the pdf's
    #: key slices ("25%", "-40mm", "12": output number); QA sheets and the JPEG SSIM floor
    orientation: str = "radiological"
    max_size: int | None = None
    series_stack: bool = False
    slices: tuple[str, ...] = ()
    qa_sheet: bool = False
    qa_fraction: float = 0.01
    ssim_threshold: float = 0.98
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            fmts = tuple(Format(f) for f in self.formats)
        except ValueError as err:
            raise ConfigError(f"invalid format in {list(self.formats)!r}: {err}") from err
        if not fmts:
            raise ConfigError("at least one --format is required")
        object.__setattr__(self, "formats", tuple(dict.fromkeys(fmts)))
        parse_window(self.window)
        if not 1 <= int(self.quality) <= 100:
            raise ConfigError(f"quality must be 1..100, got {self.quality!r}")
        if int(self.max_pixels) < 1:
            raise ConfigError(f"max_pixels must be positive, got {self.max_pixels!r}")
        self._check_deid()
        self._check_series()

    def _check_deid(self) -> None:
        from .deid.burned_in import POLICIES, parse_region

        if isinstance(self.deid_options, str):
            raise ConfigError("deid_options must be a list of option names")
        object.__setattr__(self, "deid_options", tuple(self.deid_options))
        if self.deid_options:  # none: nothing to check, and the profile's tables stay unloaded
            from .deid.profile import validate_options

            object.__setattr__(self, "deid_options", validate_options(self.deid_options))
        object.__setattr__(self, "mask_regions", tuple(parse_region(r) for r in self.mask_regions))
        if self.burned_in not in POLICIES:
            raise ConfigError(f"invalid burned-in policy {self.burned_in!r}: expected refuse or mask")
        if self.burned_in == "mask" and not self.mask_regions:
            raise ConfigError("--burned-in mask needs at least one --mask-region X,Y,W,H")
        if not self.deid and (self.deid_options or self.pseudonym_map or self.burned_in == "mask"):
            raise ConfigError("--deid-option, --burned-in mask and --pseudonym-map need "
                              "de-identification on (drop --no-deid)")

    def _check_series(self) -> None:
        from .pixels.orientation import ORIENTATIONS

        if self.orientation not in ORIENTATIONS:
            raise ConfigError(f"invalid orientation {self.orientation!r}: expected radiological or as-stored")
        if self.max_size is not None and not 1 <= int(self.max_size) <= 65535:
            raise ConfigError(f"max size must be 1..65535 pixels, got {self.max_size!r}")
        if self.series_stack and not {Format.TIFF, Format.NPY} & set(self.formats):
            raise ConfigError("--series-stack stacks tiff or npy outputs: add --format tiff or --format npy")
        if isinstance(self.slices, str):
            raise ConfigError("slices must be a list of slice choices")
        object.__setattr__(self, "slices", tuple(str(s) for s in self.slices))
        if self.slices:  # none: the report's defaults; its module loads only for choices to check
            from .report import parse_slices

            parse_slices(self.slices)
        if not 0 < float(self.qa_fraction) <= 1:
            raise ConfigError(f"QA fraction must be in (0, 1], got {self.qa_fraction!r}")
        if self.qa_sheet and not {Format.PNG, Format.JPEG} & set(self.formats):
            raise ConfigError("--qa-sheet compares 8-bit outputs: add --format jpeg or --format png")
        if not 0 <= float(self.ssim_threshold) <= 1:
            raise ConfigError(f"SSIM threshold must be in [0, 1], got {self.ssim_threshold!r}")

    @property
    def series_outputs(self) -> bool:
        """True when the series gets outputs of its own after its instances (pdf, stacks, QA)."""
        return any(f.per_series for f in self.formats) or self.series_stack or self.qa_sheet

    @property
    def window_spec(self) -> str | tuple[float, float]:
        return parse_window(self.window)

    def to_json(self) -> dict:
        d = asdict(self)
        d["formats"] = [f.value for f in self.formats]
        return d

    @classmethod
    def from_json(cls, data: dict) -> "ConvertOptions":
        """The options of a task's JSON, validated. Every task of a series carries the same
        options: the last ones parsed are answered again when equal (a dict comparison, ~1 µs,
        against ~12 µs of validation an instance)."""
        last = _last_parsed
        if last is not None and last[0] == data and type(last[1]) is cls:
            return last[1]
        if not isinstance(data, dict):
            raise ConfigError(f"options must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(unknown)!r}")
        opts = cls(**{**data, "formats": tuple(data.get("formats", ("png",)))})
        _set_last_parsed((copy.deepcopy(data), opts))  # a copy: the caller's dict may change
        return opts


_last_parsed: tuple[dict, ConvertOptions] | None = None


def _set_last_parsed(entry: tuple[dict, ConvertOptions]) -> None:
    global _last_parsed
    _last_parsed = entry


def env(name: str, default: str | None = None) -> str | None:
    """Read ``DICOMFLEET_<NAME>``; ``DICOMFLEET_<NAME>_FILE`` points at a file holding the value."""
    key = ENV_PREFIX + name
    path = os.environ.get(key + "_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as err:
            raise ConfigError(f"{key}_FILE: cannot read the file it names ({err.strerror})") from err
    return os.environ.get(key, default)
