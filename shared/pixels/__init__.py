"""Pure pixel functions ``(arr, ds, *, opts) -> ndarray``: inputs never mutated, input returned
when there is nothing to do. Together they make the display rendering of PS3.4 N.2:
stored → modality LUT → VOI → presentation → colour."""
from .modality import apply_modality_lut, rescale_of
from .voi import VoiFunction, Window, apply_window, select_window
from .render import render_8bit, stored_domain

__all__ = [
    "VoiFunction", "Window", "apply_modality_lut", "apply_window", "render_8bit", "rescale_of",
    "select_window", "stored_domain",
]
