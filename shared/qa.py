"""``--qa-sheet``: side-by-side PNGs a radiologist can spot-check at a glance.

For a sampled fraction of each series (default 1%, at least one instance, spread evenly along it):
the reference rendering made afresh from the DICOM file, the output as written (read back from the
store and decoded), and their absolute difference amplified ×``GAIN``, with the SSIM printed.
"""
from __future__ import annotations

import math

import numpy as np

from .runtime import opencv

GAIN = 10  # the difference panel shows |reference - output| × GAIN, clipped at 255
MIN_PANEL, MAX_PANEL = 256, 1024  # panel's longer side: nearest-neighbour ×k up, INTER_AREA down
_GUTTER, _BAND = 8, 40


def sample(indices: list[int], fraction: float) -> list[int]:
    """``ceil(fraction × n)`` (at least one) of ``indices``, evenly spread (one: the middle)."""
    if not indices:
        return []
    k = min(len(indices), max(1, math.ceil(fraction * len(indices))))
    return sorted({indices[min(len(indices) - 1, int((j + 0.5) * len(indices) / k))] for j in range(k)})


def _panel(img: np.ndarray) -> np.ndarray:
    rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
    longer = max(rgb.shape[:2])
    if longer < MIN_PANEL:
        k = math.ceil(MIN_PANEL / longer)
        return np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)  # every pixel a k×k block: honest
    if longer > MAX_PANEL:
        scale = MAX_PANEL / longer
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        cv2 = opencv()
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return rgb


def difference(reference: np.ndarray, output: np.ndarray) -> np.ndarray:
    return np.abs(reference.astype(np.int16) - output.astype(np.int16)).astype(np.uint8)


def qa_sheet(reference: np.ndarray, output: np.ndarray, *, labels: tuple[str, str],
             footer: str) -> np.ndarray:
    """The sheet as an RGB array: reference | output | |difference| × GAIN, labelled, ``footer``
    (the SSIM line) underneath."""
    from PIL import Image, ImageDraw, ImageFont

    from .font import font_path

    diff = np.clip(difference(reference, output).astype(np.uint16) * GAIN, 0, 255).astype(np.uint8)
    panels = [_panel(reference), _panel(output), _panel(diff)]
    h, w = panels[0].shape[:2]
    width = 3 * w + 4 * _GUTTER
    sheet = np.full((h + 2 * _BAND, width, 3), 255, dtype=np.uint8)
    for k, panel in enumerate(panels):
        x = _GUTTER + k * (w + _GUTTER)
        sheet[_BAND:_BAND + h, x:x + w] = panel
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(str(font_path()), 14)
    texts = (*labels, f"|difference| \u00d7{GAIN}")
    for k, text in enumerate(texts):
        draw.text((_GUTTER + k * (w + _GUTTER), _BAND // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    draw.text((_GUTTER, _BAND + h + _BAND // 2), footer, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(image)
