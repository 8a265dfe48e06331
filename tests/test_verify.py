"""shared/verify.ssim: the mean SSIM of Wang et al. (2004) as an all-float64 evaluation of the
formula gives it, to 1e-6, on CT renderings at several JPEG qualities and on noise."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from shared.dataset import decode_pixels, read_dataset
from shared.encode import encode_jpeg
from shared.pixels.render import render_8bit
from shared.verify import decode, ssim

from .synthetic import write_series

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The formula as written, every step in float64: Gaussian window σ = 1.5 (11×11), reflected edges."""
    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    x, y = a.astype(np.float64), b.astype(np.float64)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return float(np.mean((2 * mx * my + C1) * (2 * cxy + C2) / ((mx * mx + my * my + C1) * (vx + vy + C2))))


@pytest.fixture(scope="module")
def renderings(tmp_path_factory) -> list[np.ndarray]:
    paths = write_series(tmp_path_factory.mktemp("ssim"), slices=3, size=256, seed=5)
    return [render_8bit(decode_pixels(ds, max_pixels=1 << 28), ds)[0]
            for ds in (read_dataset(p.read_bytes()) for p in paths)]


def test_ssim_is_the_formula_in_float64_to_a_millionth(renderings):
    rng = np.random.default_rng(3)
    pairs = [(img, decode("jpeg", encode_jpeg(img, quality))) for img in renderings for quality in (95, 50, 5)]
    noise = rng.integers(0, 256, (128, 160), dtype=np.uint8)
    pairs += [(noise, np.clip(noise.astype(int) + rng.integers(-40, 41, noise.shape), 0, 255).astype(np.uint8)),
              (noise, 255 - noise), (np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8))]
    scores = []
    for a, b in pairs:
        ours = ssim(b, a)
        assert abs(ours - reference_ssim(b, a)) < 1e-6
        scores.append(ours)
    assert min(scores) < 0.1 and max(scores) > 0.99  # from unrelated to near-identical


def test_identical_images_score_one_and_shapes_must_match(renderings):
    assert round(ssim(renderings[0], renderings[0]), 6) == 1.0
    with pytest.raises(ValueError, match="equal shapes"):
        ssim(renderings[0], renderings[0][:-1])
