"""shared/verify.ssim: the mean SSIM of Wang et al. (2004) as an all-float64 evaluation of the
formula gives it, to 1e-12, on CT renderings at several JPEG qualities, noise, flat areas and
images smaller than the window, by both routes (shared/_ssim.c where it was built, OpenCV's blurs
and numpy otherwise)."""
from __future__ import annotations

import io
import pickle
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import cv2
import numpy as np
import pytest

from shared import verify

from shared.dataset import decode_pixels, read_dataset
from shared.encode import encode_jpeg
from shared.pixels.render import render_8bit
from shared.errors import VerificationError
from shared.verify import decode, ssim, verify_lossless

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


def _noisy(img: np.ndarray, rng: np.random.Generator, spread: int = 40) -> np.ndarray:
    return np.clip(img.astype(int) + rng.integers(-spread, spread + 1, img.shape), 0, 255).astype(np.uint8)


def _pairs(renderings: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """CT renderings against their JPEGs; noise against noisier and inverted; flat pairs; the
    edge cases of the reflected border: images narrower or shorter than the window, down to one
    pixel; colour (three channels, and a reversed-channel view as decode() returns)."""
    rng = np.random.default_rng(3)
    pairs = [(img, decode("jpeg", encode_jpeg(img, quality))) for img in renderings for quality in (95, 50, 5)]
    noise = rng.integers(0, 256, (128, 160), dtype=np.uint8)
    pairs += [(noise, _noisy(noise, rng)), (noise, 255 - noise)]
    # flat areas: the variances are small differences of large moments there
    pairs += [(np.full((64, 64), u, np.uint8), np.full((64, 64), v, np.uint8))
              for u, v in [(0, 255), (250, 251), (200, 180), (255, 255)]]
    for shape in [(1, 1), (1, 7), (3, 5), (5, 3), (11, 11), (12, 7), (100, 37), (20, 30, 3), (7, 9, 4)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        pairs += [(img, _noisy(img, rng)), (img, 255 - img)]
    colour = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    pairs.append((colour[..., ::-1], _noisy(colour, rng)[..., ::-1]))
    return pairs


@pytest.mark.parametrize("route", ["ssim", "_ssim_opencv"])
def test_ssim_is_the_formula_in_float64_to_a_millionth(renderings, route):
    score = getattr(verify, route)
    scores = []
    for a, b in _pairs(renderings):
        ours = score(b, a)
        assert abs(ours - reference_ssim(b, a)) < 1e-12, (route, a.shape, a.flat[0], b.flat[0])
        scores.append(ours)
    assert min(scores) < -0.9 and max(scores) > 0.99  # from inverted to near-identical


def test_the_one_pass_ssim_takes_8_bit_images_and_declines_the_rest(renderings):
    _ssim = pytest.importorskip("shared._ssim", reason="the one-pass SSIM was not built here")
    assert verify.SSIM_ROUTE == "one-pass"
    img = renderings[0]
    assert _ssim.mean_ssim(img, img) == 1.0
    for a, b in [(img.astype(np.int16), img), (img, img[:-1]), (img[0], img[0]), (img[:, ::2], img[:, ::2]),
                 (img[None, None], img[None, None]), (img.tobytes(), img.tobytes())]:
        assert _ssim.mean_ssim(a, b) is None  # not uint8, unequal, 1-D, strided, 4-D, no shape
    # declined input still gets its score, by OpenCV's route
    wide = img.astype(np.uint16)
    assert verify.ssim(wide, wide) == pytest.approx(1.0, abs=1e-12)


def _levels_this_cpu_runs() -> list[str]:
    """The x86-64 instruction-set levels shared/_ssim.c dispatches among that this CPU runs."""
    if platform.machine() != "x86_64" or not Path("/proc/cpuinfo").exists():
        return []
    flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    need = {"x86-64": set(), "x86-64-v3": {"avx2", "fma", "bmi2", "movbe"},
            "x86-64-v4": {"avx2", "fma", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}}
    return [level for level, wanted in need.items() if wanted <= flags]


@pytest.mark.skipif(not shutil.which("gcc") or len(_levels_this_cpu_runs()) < 2,
                    reason="needs gcc and an x86-64 CPU that runs two levels or more")
def test_the_one_pass_ssim_gives_the_same_bits_with_every_instruction_set(tmp_path, renderings):
    """shared/_ssim.c built for each instruction-set level it dispatches among at load that this
    CPU runs (x86-64; x86-64-v3: AVX2 and FMA; x86-64-v4: AVX-512) scores every pair to the same
    bits, so a manifest's SSIM does not depend on the node's CPU."""
    source = Path(verify.__file__).with_name("_ssim.c")
    include = sysconfig.get_paths()["include"]
    pairs = pickle.dumps([(a.tobytes(), b.tobytes(), a.shape) for a, b in _pairs(renderings)])
    # run in the variant's directory (first on sys.path for -c) and with -S: no site, so no
    # editable install's finder puts the project's own build first
    code = ("import pickle, sys; from shared import _ssim; print(_ssim.__file__); "
            "print([_ssim.mean_ssim(memoryview(a).cast('B', s), memoryview(b).cast('B', s)).hex() "
            "for a, b, s in pickle.load(sys.stdin.buffer)])")
    scores = {}
    for level in _levels_this_cpu_runs():
        package = tmp_path / level / "shared"
        package.mkdir(parents=True)
        (package / "__init__.py").touch()
        lib = package / ("_ssim" + sysconfig.get_config_var("EXT_SUFFIX"))
        subprocess.run(["gcc", "-shared", "-fPIC", "-O3", "-ffp-contract=off", f"-march={level}", "-DCLONES=",
                        f"-I{include}", str(source), "-o", str(lib)], check=True)
        out = subprocess.run([sys.executable, "-S", "-c", code], input=pairs, capture_output=True, check=True,
                             cwd=package.parent, env={}).stdout.decode().splitlines()
        assert out[0] == str(lib)
        scores[level] = out[1]
    assert len(set(scores.values())) == 1, scores
    assert len(eval(scores["x86-64"])) == len(_pairs(renderings))


def test_identical_images_score_one_and_shapes_must_match(renderings):
    assert round(ssim(renderings[0], renderings[0]), 6) == 1.0
    with pytest.raises(ValueError, match="equal shapes"):
        ssim(renderings[0], renderings[0][:-1])


def _tiff(arr: np.ndarray, **kwargs) -> bytes:
    from shared.encode import encode_tiff

    return encode_tiff(arr, rgb=arr.ndim == 3 and arr.shape[-1] == 3, **kwargs)


TIFF_CASES = {
    "uint16 CT": (np.random.default_rng(1).integers(0, 4096, (512, 512))).astype(np.uint16),
    "int16 signed": np.random.default_rng(2).integers(-2048, 2048, (33, 17)).astype(np.int16),
    "uint8": np.random.default_rng(3).integers(0, 256, (5, 300)).astype(np.uint8),
    "int32": np.random.default_rng(4).integers(-(1 << 30), 1 << 30, (9, 7)).astype(np.int32),
    "one pixel": np.array([[7]], dtype=np.uint16),
    "a transposed view": np.random.default_rng(5).integers(0, 4096, (40, 60)).astype(np.uint16).T,
}


@pytest.mark.parametrize("name", list(TIFF_CASES))
def test_tiff_holds_what_tifffile_reads_and_nothing_else(name):
    """The direct TIFF check agrees with tifffile's decode on our single-page grey outputs: it
    proves them, and any changed value, dimension, type or layout fails it (the decode decides)."""
    import tifffile

    from shared.verify import tiff_holds

    img = TIFF_CASES[name]
    buf = _tiff(img)
    assert np.array_equal(tifffile.imread(io.BytesIO(buf)), img) and tiff_holds(buf, img)
    assert verify_lossless("tiff", buf, img) == "lossless"
    changed = img.copy()
    changed.flat[-1] ^= 1
    assert not tiff_holds(buf, changed)
    with pytest.raises(VerificationError, match="tiff output does not decode back"):
        verify_lossless("tiff", buf, changed)
    assert not tiff_holds(buf, img.astype(np.int64 if img.dtype.kind == "i" else np.float32))
    if img.size > 1:
        assert not tiff_holds(buf, img.reshape(1, -1))
    if img.itemsize > 1:  # the same values, held big-endian: declined, then decoded equal
        assert not tiff_holds(buf, img.astype(img.dtype.newbyteorder(">")))
    assert not tiff_holds(buf[:-1], img)  # a strip cut short
    flipped = bytearray(buf)
    flipped[len(buf) - 1] ^= 0xFF  # the last pixel's high byte, in the file
    assert not tiff_holds(bytes(flipped), img)


def test_tiff_layouts_the_direct_check_does_not_read_go_to_tifffile():
    """Colour, several pages, big-endian: `tiff_holds` declines, tifffile's decode verifies."""
    import tifffile

    from shared.verify import tiff_holds

    rgb = np.random.default_rng(6).integers(0, 256, (8, 9, 3)).astype(np.uint8)
    pages = np.random.default_rng(7).integers(0, 4096, (3, 8, 9)).astype(np.uint16)
    for img, buf in ((rgb, _tiff(rgb)), (pages, _tiff(pages))):
        assert not tiff_holds(buf, img) and verify_lossless("tiff", buf, img) == "lossless"
    out = io.BytesIO()
    tifffile.imwrite(out, pages[0], byteorder=">")
    assert not tiff_holds(out.getvalue(), pages[0]) and verify_lossless("tiff", out.getvalue(), pages[0]) == "lossless"
    with pytest.raises(VerificationError):
        verify_lossless("tiff", out.getvalue(), pages[1])
