"""shared/_deflate.c: the run-length deflate stream of PNG rows, read back by three inflaters."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sysconfig
import zlib
from pathlib import Path

import deflate
import numpy as np
import pytest
from zlib_ng import zlib_ng

from shared import png

_deflate = pytest.importorskip("shared._deflate", reason="shared/_deflate.c was not built")
BLOCK_SYMBOLS = 32768  # _deflate.c: a block's symbols


def _fibonacci_bytes() -> bytes:
    """Bytes 0..19 repeated 1, 2, 3, 5, … 10946 times, no byte next to its like (no runs, so no
    matches): with the end-of-block symbol's one, Fibonacci frequencies, whose Huffman code is a
    chain 20 bits deep in one block; the writer must limit it to 15."""
    fib = [1, 2]
    while len(fib) < 20:
        fib.append(fib[-1] + fib[-2])
    grouped = np.concatenate([np.full(f, k, np.uint8) for k, f in reversed(list(enumerate(fib)))])
    data = np.empty_like(grouped)  # commonest first over the even places, the rest over the odd
    half = -(-len(grouped) // 2)
    data[0::2], data[1::2] = grouped[:half], grouped[half:]
    assert not (data[1:] == data[:-1]).any()
    return data.tobytes()


def _inputs() -> dict[str, bytes]:
    rng = np.random.default_rng(2026)
    yy, xx = np.mgrid[0:512, 0:512]
    ct = ((np.sin(xx / 9) + np.cos(yy / 7)) * 900 + 2048 + rng.normal(0, 30, (512, 512))).clip(0, 4095)
    ct[:, :80] = 0  # air
    u16 = ct.astype(np.uint16)
    return {
        "empty": b"",
        "one byte": b"\x07",
        "two equal": b"\x07\x07",
        "run of three after one": b"a" * 4,
        "runs at every length around 258": b"".join(bytes([k % 7]) * k for k in range(1, 600)),
        "a long run": b"\0" * 1_000_003,
        "every byte value": bytes(range(256)) * 3,
        "noise (incompressible)": rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes(),
        "literals across a block boundary": (np.arange(BLOCK_SYMBOLS + 1) % 251).astype(np.uint8).tobytes(),
        "runs and literals alternating": b"".join(b"xy" + b"z" * (k % 5) for k in range(50_000)),
        "Fibonacci frequencies": _fibonacci_bytes(),
        "8-bit CT rows": png.filtered_rows((u16 >> 4).astype(np.uint8)).tobytes(),
        "16-bit CT rows": png.filtered_rows(u16).tobytes(),
        "16-bit noise rows": png.filtered_rows(rng.integers(0, 65536, (300, 301)).astype(np.uint16)).tobytes(),
    }


INPUTS = _inputs()


@pytest.mark.parametrize("name", list(INPUTS))
def test_three_inflaters_read_back_every_input(name):
    """zlib, zlib-ng and libdeflate each inflate the raw stream to exactly the input: every
    block's codes complete and at most 15 bits (zlib refuses an over-subscribed or incomplete code)."""
    data = INPUTS[name]
    stream = _deflate.rle_deflate(data)
    assert zlib.decompress(stream, -15) == data
    assert zlib_ng.decompress(stream, -15) == data
    assert deflate.deflate_decompress(stream, len(data)) == data


def test_streams_are_as_small_as_zlib_ngs_run_length_strategy():
    """The same kind of stream as zlib-ng's Z_RLE: within 1% of its size on CT rows, and the long
    run a few hundred bytes (matches of 258)."""
    for name in ("8-bit CT rows", "16-bit CT rows", "runs and literals alternating", "Fibonacci frequencies"):
        ours = len(_deflate.rle_deflate(INPUTS[name]))
        deflater = zlib_ng.compressobj(1, zlib_ng.DEFLATED, -15, 9, zlib_ng.Z_RLE)
        theirs = len(deflater.compress(INPUTS[name]) + deflater.flush())
        assert abs(ours - theirs) <= 0.01 * theirs, (name, ours, theirs)
    assert len(_deflate.rle_deflate(INPUTS["a long run"])) < 1_000_003 // 258 + 200


def _first_block_code_lengths(stream: bytes) -> list[int]:
    """The literal/length code lengths a dynamic block's header (RFC 1951 3.2.7) gives."""
    bits = int.from_bytes(stream, "little")
    pos = 0

    def take(n: int) -> int:
        nonlocal pos
        value = (bits >> pos) & ((1 << n) - 1)
        pos += n
        return value

    assert take(3) >> 1 == 2  # BTYPE 10: dynamic codes
    hlit, hdist, hclen = take(5) + 257, take(5) + 1, take(4) + 4
    order = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]
    cl_lens = [0] * 19
    for k in range(hclen):
        cl_lens[order[k]] = take(3)
    codes, code = {}, 0  # canonical codes, read MSB first
    for length in range(1, 8):
        for sym in range(19):
            if cl_lens[sym] == length:
                codes[(length, code)] = sym
                code += 1
        code <<= 1
    lens: list[int] = []
    while len(lens) < hlit + hdist:
        length, code = 0, 0
        while (length, code) not in codes:
            code, length = code << 1 | take(1), length + 1
        sym = codes[(length, code)]
        if sym < 16:
            lens.append(sym)
        elif sym == 16:
            lens += [lens[-1]] * (3 + take(2))
        else:
            lens += [0] * (3 + take(3) if sym == 17 else 11 + take(7))
    return lens[:hlit]


def test_codes_deeper_than_15_bits_are_limited_to_15():
    """Fibonacci frequencies make Huffman's code 20 bits deep; deflate allows 15: the block's
    rarest symbols get 15-bit codes, and three inflaters read it (above)."""
    lens = _first_block_code_lengths(_deflate.rle_deflate(INPUTS["Fibonacci frequencies"]))
    assert max(lens) == 15
    assert lens[256] == 15 and lens[19] == 1  # the end of block (counted once), the commonest byte
    assert sorted(lens[:20], reverse=True)[:5] == [15] * 5  # limiting lengthened shorter codes too


def test_any_contiguous_buffer_and_nothing_else():
    data = INPUTS["8-bit CT rows"]
    want = _deflate.rle_deflate(data)
    assert _deflate.rle_deflate(bytearray(data)) == want
    assert _deflate.rle_deflate(memoryview(data)) == want
    assert _deflate.rle_deflate(np.frombuffer(data, np.uint8).reshape(-1, 513)) == want
    with pytest.raises(ValueError, match="not C-contiguous"):
        _deflate.rle_deflate(np.frombuffer(data, np.uint8).reshape(-1, 513)[:, ::2])
    with pytest.raises(TypeError):
        _deflate.rle_deflate("rows")


def test_png_route_wraps_the_stream_in_zlibs_header_and_adler32():
    """png.py's stream is RFC 1950: header 78 01, the raw stream, the Adler-32 of the rows."""
    rows = np.frombuffer(INPUTS["16-bit CT rows"], np.uint8)
    if png.rle_deflate is None:
        pytest.skip("png.py deflates with zlib-ng here")
    stream = png.compress(rows)
    assert stream[:2] == b"\x78\x01" and int.from_bytes(b"\x78\x01", "big") % 31 == 0
    assert stream[-4:] == zlib.adler32(rows).to_bytes(4, "big")
    assert zlib.decompress(stream) == rows.tobytes()
    assert png.DEFLATE_ROUTE == "one-pass"


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    return set(text.split("flags", 1)[1].split("\n", 1)[0].split()) if "flags" in text else set()


#: Builds a node may run: without SSE2 (as on ARM: runs found byte by byte), plain x86-64, and
#: x86-64-v3 (the BMI2 clone), each compiled alone
VARIANTS = {
    "bytewise": (["-U__SSE2__", "-DCLONES="], set()),
    "x86-64": (["-march=x86-64", "-DCLONES="], set()),
    "x86-64-v3": (["-march=x86-64-v3", "-DCLONES="], {"avx2", "bmi2", "fma", "movbe"}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_build_writes_the_same_bytes(variant, tmp_path):
    """shared/_deflate.c built for each path a node may take writes the same bytes as this
    install's, so a node's CPU family does not change its files."""
    flags, needs = VARIANTS[variant]
    if not shutil.which("gcc") or not Path("/proc/cpuinfo").exists() or "sse2" not in _cpu_flags():
        pytest.skip("needs gcc on an x86-64 CPU")
    if not needs <= _cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(needs - _cpu_flags())}")
    source = Path(png.__file__).with_name("_deflate.c")
    lib = tmp_path / ("_deflate" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["gcc", "-shared", "-fPIC", "-O3", *flags, f"-I{sysconfig.get_paths()['include']}",
                    str(source), "-o", str(lib)], check=True)
    spec = importlib.util.spec_from_file_location("shared._deflate", lib)
    built = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(built)
    assert built.SCAN == ("bytewise" if variant == "bytewise" else "sse2")
    for name, data in INPUTS.items():
        assert built.rle_deflate(data) == _deflate.rle_deflate(data), name


def test_short_inputs_of_every_kind_read_back():
    """Sizes from 0 to ~3 kB over alphabets of 1 to 256 values, with and without runs: the
    stream's bound holds for tiny blocks whose code header outweighs their data."""
    rng = np.random.default_rng(5)
    for size in range(0, 3000, 13):
        for alphabet in (1, 2, 17, 256):
            data = rng.integers(0, alphabet, size, dtype=np.uint16).astype(np.uint8)
            if alphabet == 17:
                data = np.repeat(data, 3)[:size]  # runs of three and more
            raw = data.tobytes()
            assert zlib.decompress(_deflate.rle_deflate(raw), -15) == raw, (size, alphabet)
