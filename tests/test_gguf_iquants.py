"""kernels/iquant.py: ggml's i-quants dequantized bit for bit as gguf-py and llama.cpp do.

Random blocks (random bytes; the fp16 scale fields any finite half, subnormals and zero
included) of several rows, through the C library and the torch formulas, against
``gguf.quants.dequantize`` and llama.cpp's own ``dequantize_row_iq*`` (libggml-base of
llama-cpp-python) -- the latter also on a GGUF file llama.cpp's reader opens. Enough blocks
that every grid point is indexed (asserted), so a wrong grid row anywhere would show.
The few-row matmul (integer block dot products against Q8_K activations, 8 and 16 bits)
equals kquant.reference_linear's math under the native and the plain-C build, exactly where
no float rounding can hide a wrong integer, and the two builds agree bit for bit.
"""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels import dispatch, iquant, kquant

gguf = pytest.importorskip("gguf")
from gguf import quants as gq  # noqa: E402

from tests import gguf_helpers as H  # noqa: E402

TYPES = ["IQ2_XXS", "IQ1_S", "IQ1_M", "IQ2_XS", "IQ3_XXS", "IQ2_S", "IQ3_S"]
GRIDS = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S"]
ROWS, BLOCKS = 24, 64               # 1536 blocks: every point of the largest grid (IQ1's 2048) is hit


def _finite_halves(rng, n: int) -> np.ndarray:
    """n random finite fp16 bit patterns (any sign and exponent but all-ones: zero, subnormals,
    up to 65504), as uint16."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    inf_nan = (bits & 0x7C00) == 0x7C00
    bits[inf_nan] &= 0xBFFF                     # exponent 31 -> 15: a finite half
    return bits


def random_blocks(name: str, rows: int = ROWS, nb: int = BLOCKS, seed: int = 0) -> np.ndarray:
    """uint8 [rows, nb * bytes]: random blocks of type ``name`` whose fp16 scale is finite."""
    rng = np.random.default_rng(seed)
    bb = iquant.IQ_TYPES[iquant.NAMES[name]][2]
    b = rng.integers(0, 256, size=(rows * nb, bb), dtype=np.uint8)
    d = _finite_halves(rng, rows * nb)
    return iquant.set_scales(name, b, d).reshape(rows, nb * bb)


def grid_indices(name: str, blocks: np.ndarray) -> np.ndarray:
    """Every grid index the blocks use (from the block layouts, independently of iquant)."""
    bb = iquant.IQ_TYPES[iquant.NAMES[name]][2]
    b = blocks.reshape(-1, bb).astype(np.int64)
    if name == "IQ2_XXS":
        return b[:, 2:66].reshape(-1, 8, 8)[:, :, 0:4].ravel()
    if name == "IQ2_XS":
        return ((b[:, 2:66:2] | b[:, 3:66:2] << 8) & 511).ravel()
    if name == "IQ2_S":
        hi = b[:, 66:74, None] >> np.array([0, 2, 4, 6]) & 3
        return (b[:, 2:34] | hi.reshape(-1, 32) << 8).ravel()
    if name == "IQ3_XXS":
        return b[:, 2:66].ravel()
    if name == "IQ3_S":
        hi = b[:, 66:74, None] >> np.arange(8) & 1
        return (b[:, 2:66] | hi.reshape(-1, 64) << 8).ravel()
    if name == "IQ1_S":
        qh = b[:, 34:50:2] | b[:, 35:50:2] << 8
        hi = qh[:, :, None] >> np.array([0, 3, 6, 9]) & 7
        return (b[:, 2:34] | hi.reshape(-1, 32) << 8).ravel()
    if name == "IQ1_M":
        h = np.stack([b[:, 32:48] & 7, b[:, 32:48] >> 4 & 7], axis=-1).reshape(-1, 32)
        return (b[:, 0:32] | h << 8).ravel()
    raise AssertionError(name)


def gguf_py(name: str, blocks: np.ndarray) -> np.ndarray:
    return np.asarray(gq.dequantize(blocks, gguf.GGMLQuantizationType[name]), dtype=np.float32)


def assert_bits_equal(got, want) -> None:
    got, want = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
    assert got.shape == want.shape
    bad = got.view(np.uint32) != want.view(np.uint32)
    assert not bad.any(), f"{int(bad.sum())} of {bad.size} values differ, e.g. {got[bad][:4]} != {want[bad][:4]}"


def native():
    so = iquant.lib()
    if so is None:
        pytest.skip("no C compiler: the i-quant library does not build here")
    return so


# ---------------------------------------------------------------------------------------
# tables


@pytest.mark.parametrize("name", GRIDS)
def test_each_grid_is_gguf_py_s(name):
    cls = getattr(gq, name)
    cls.init_grid()
    want = cls.grid.reshape(cls.grid_shape)
    got = iquant.grid(name)
    assert tuple(got.shape) == cls.grid_shape
    assert np.array_equal(got.numpy().astype(np.float32), want)


def test_iq1_m_indexes_iq1_s_s_grid_and_the_sign_table_is_gguf_py_s():
    assert iquant.grid("IQ1_M") is iquant.grid("IQ1_S")
    assert iquant.KSIGNS.tolist() == list(gq.IQ2_XXS.ksigns)


def test_type_table_is_gguf_s():
    for tid, (name, bs, bb) in iquant.IQ_TYPES.items():
        qt = gguf.GGMLQuantizationType[name]
        assert int(qt) == tid
        assert gguf.GGML_QUANT_SIZES[qt] == (bs, bb)


@pytest.mark.parametrize("name", TYPES)
def test_the_random_blocks_index_every_grid_point(name):
    used = np.unique(grid_indices(name, random_blocks(name)))
    assert used.tolist() == list(range(iquant.grid(name).shape[0]))


# ---------------------------------------------------------------------------------------
# bit for bit against gguf-py


@pytest.mark.parametrize("name", TYPES)
def test_torch_path_equals_gguf_py_bit_for_bit(name):
    b = random_blocks(name)
    got = iquant.torch_dequantize_rows(name, torch.from_numpy(b), BLOCKS * 256)
    assert got.dtype == torch.float32 and tuple(got.shape) == (ROWS, BLOCKS * 256)
    assert_bits_equal(got.numpy(), gguf_py(name, b))


@pytest.mark.parametrize("name", TYPES)
def test_native_path_equals_gguf_py_bit_for_bit(name):
    so = native()
    b = random_blocks(name, seed=1)
    want = gguf_py(name, b)
    assert_bits_equal(iquant.native_dequantize_rows(name, torch.from_numpy(b), BLOCKS * 256, so=so).numpy(), want)
    threads = torch.get_num_threads()
    try:                                     # the OpenMP split over blocks gives the same values
        torch.set_num_threads(2)
        assert_bits_equal(iquant.native_dequantize_rows(name, torch.from_numpy(b), BLOCKS * 256, so=so).numpy(), want)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("march", [None, "x86-64"])
@pytest.mark.parametrize("name", TYPES)
def test_bf16_rows_are_gguf_py_s_weights_rounded_as_torch_rounds(name, march):
    """Rows written straight to bf16 (prefill tiles on bf16 CPUs): gguf-py's float32 weights
    through torch's .to(bfloat16), bit for bit, NaN-free extremes included; this CPU's build and
    the plain-C one (on x86-64)."""
    native()
    if march is not None and not _X86:
        pytest.skip("x86-64 targets")
    so = iquant.load(march) if march else iquant.lib()
    b = random_blocks(name, rows=6, nb=4, seed=5)
    want = torch.from_numpy(gguf_py(name, b)).to(torch.bfloat16)
    out = torch.empty(6, 4 * 256, dtype=torch.bfloat16)
    got = iquant.native_dequantize_rows(name, torch.from_numpy(b), 4 * 256, out=out, so=so)
    assert got is out and torch.equal(got.view(torch.int16), want.view(torch.int16))


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 targets")
@pytest.mark.parametrize("march", ["x86-64", "haswell"])
def test_other_x86_builds_give_the_same_bits(march):
    native()
    so = iquant.load(march)
    for name in TYPES:
        b = random_blocks(name, rows=3, nb=8, seed=2)
        assert_bits_equal(iquant.native_dequantize_rows(name, torch.from_numpy(b), 8 * 256, so=so).numpy(),
                          gguf_py(name, b))


def test_the_arm64_build_gives_the_same_bits():
    """The C built for aarch64 (zig's clang) and run on an emulated ARM64 CPU
    (tests/arm64_emulator.py), one thread."""
    import arm64_emulator

    reason = arm64_emulator.available()
    if reason:
        pytest.skip(f"the ARM64 build {reason}")
    image = arm64_emulator.cross_build(iquant.SOURCE, flags=iquant.EXTRA_FLAGS, cpu=arm64_emulator.NO_DOTPROD)
    so = iquant._bind(arm64_emulator.EmulatedLibrary(image))
    for name in TYPES:
        b = random_blocks(name, rows=2, nb=2, seed=8)
        assert_bits_equal(iquant.native_dequantize_rows(name, torch.from_numpy(b), 2 * 256, so=so).numpy(),
                          gguf_py(name, b))


@pytest.mark.parametrize("name", TYPES)
def test_each_perturbed_byte_changes_the_output_and_both_paths_follow(name):
    """Flipping any one bit-field byte of a block moves some weight (no byte is ignored) and both
    paths still agree with gguf-py on the perturbed block."""
    so = native()
    b = random_blocks(name, rows=1, nb=1, seed=3)
    d = np.array([0x3C00], dtype="<u2")           # scale 1.0 so that no product underflows to 0
    if name != "IQ1_M":
        b[0, 0:2] = d.view(np.uint8)
    base = gguf_py(name, b)
    assert np.all(np.isfinite(base)) and np.any(base != 0)
    bb = b.shape[1]
    for pos in range(2 if name != "IQ1_M" else 0, bb):
        p = b.copy()
        p[0, pos] ^= 0x5A
        want = gguf_py(name, p)
        assert not np.array_equal(want, base), f"byte {pos} changed nothing"
        assert_bits_equal(iquant.torch_dequantize_rows(name, torch.from_numpy(p), 256).numpy(), want)
        assert_bits_equal(iquant.native_dequantize_rows(name, torch.from_numpy(p), 256, so=so).numpy(), want)


@pytest.mark.parametrize("name", ["IQ2_XXS", "IQ1_S"])
def test_a_wrong_grid_row_is_caught(name, monkeypatch):
    """The comparison can fail: one swapped pair of grid points makes both paths differ."""
    so = native()
    b = random_blocks(name, rows=4, nb=16, seed=4)
    want = gguf_py(name, b)
    bad = iquant.grid(name).clone()
    bad[[5, 6]] = bad[[6, 5]]
    monkeypatch.setattr(iquant, "grid", lambda n: bad)
    iquant._grid_f32.cache_clear()
    try:
        for got in (iquant.torch_dequantize_rows(name, torch.from_numpy(b), 16 * 256),
                    iquant.native_dequantize_rows(name, torch.from_numpy(b), 16 * 256, so=so)):
            assert not np.array_equal(got.numpy(), want)
    finally:
        iquant._grid_f32.cache_clear()


# ---------------------------------------------------------------------------------------
# the API


def test_rows_of_a_larger_buffer_a_type_id_and_a_reused_out_buffer():
    so = native()
    name, cols = "IQ2_XXS", 3 * 256
    wide = torch.from_numpy(random_blocks(name, rows=6, nb=5, seed=5))       # rows of 5 blocks
    view = wide[1:5, 66:66 + 3 * 66]                                         # 4 rows of blocks 1..3
    want = gguf_py(name, view.contiguous().numpy())
    out = torch.full((4, cols), float("nan"))
    got = iquant.native_dequantize_rows(16, view, cols, out=out, so=so)
    assert got is out
    assert_bits_equal(out.numpy(), want)
    tile = torch.full((8, cols + 64), float("nan"))[:4, :cols]               # rows with a stride
    iquant.native_dequantize_rows(name, view, cols, out=tile, so=so)
    assert_bits_equal(tile.numpy(), want)
    assert_bits_equal(iquant.torch_dequantize_rows(16, view, cols).numpy(), want)


def test_dequantize_rows_runs_the_torch_formulas_without_the_library(monkeypatch):
    name = "IQ1_S"
    b = random_blocks(name, rows=2, nb=3, seed=6)
    monkeypatch.setattr(iquant, "_LIB", None)
    monkeypatch.setattr(iquant, "_TRIED", True)
    out = torch.empty(2, 3 * 256)
    assert iquant.dequantize_rows(name, torch.from_numpy(b), 3 * 256, out=out) is out
    assert_bits_equal(out.numpy(), gguf_py(name, b))


def test_bad_shapes_and_types_are_refused():
    b = torch.zeros(2, 66, dtype=torch.uint8)
    with pytest.raises(ValueError):
        iquant.dequantize_rows("IQ2_XXS", b, 512)          # 66 bytes are one block, not two
    with pytest.raises(ValueError):
        iquant.dequantize_rows("Q4_K", torch.zeros(2, 144, dtype=torch.uint8), 256)
    with pytest.raises(ValueError):
        iquant.row_bytes("IQ1_S", 100)
    assert iquant.row_bytes("IQ1_S", 7168) == 28 * 50


# ---------------------------------------------------------------------------------------
# llama.cpp


def _ggml():
    llama_cpp = pytest.importorskip("llama_cpp")
    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    found = sorted(lib_dir.glob("libggml-base.so*")) + sorted(lib_dir.glob("libggml-base.dylib"))
    if not found:
        pytest.skip("llama-cpp-python without libggml-base")
    so = ctypes.CDLL(str(found[0]))
    for name in TYPES:
        f = getattr(so, f"dequantize_row_{name.lower()}")
        f.argtypes, f.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
    return so


def llama_dequantize(so, name: str, data: int, n: int) -> np.ndarray:
    """llama.cpp's dequantize_row_<type> over n weights at address ``data``."""
    y = np.empty(n, dtype=np.float32)
    getattr(so, f"dequantize_row_{name.lower()}")(data, y.ctypes.data, n)
    return y


@pytest.mark.parametrize("name", TYPES)
def test_equal_to_llama_cpp_s_dequantize_row(name):
    ggml = _ggml()
    b = np.ascontiguousarray(random_blocks(name, seed=7))
    want = llama_dequantize(ggml, name, b.ctypes.data, b.shape[0] * BLOCKS * 256).reshape(ROWS, -1)
    assert_bits_equal(iquant.torch_dequantize_rows(name, torch.from_numpy(b), BLOCKS * 256).numpy(), want)
    if iquant.lib() is not None:
        assert_bits_equal(iquant.dequantize_rows(name, torch.from_numpy(b), BLOCKS * 256).numpy(), want)


class _GGUFInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


def test_a_gguf_file_of_i_quant_matrices_reads_as_llama_cpp_reads_it(tmp_path):
    """One matrix per type written with gguf-py's GGUFWriter (raw blocks), opened by llama.cpp's
    gguf reader and by ours (local_engine.gguf_file): the engine's bytes dequantize to what
    llama.cpp computes from its own."""
    from local_engine.gguf_file import GGUFFile

    ggml = _ggml()
    path = tmp_path / "iq.gguf"
    w = gguf.GGUFWriter(str(path), "deepseek2")
    mats = {}
    for i, name in enumerate(TYPES):
        b = random_blocks(name, rows=4 + i, nb=3, seed=10 + i)       # [rows, 3 blocks]: cols 768
        w.add_tensor(f"m.{name}", b, raw_dtype=gguf.GGMLQuantizationType[name])
        mats[name] = b
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    ggml.gguf_init_from_file.argtypes = [ctypes.c_char_p, _GGUFInitParams]
    ggml.gguf_init_from_file.restype = ctypes.c_void_p
    ggml.ggml_get_tensor.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ggml.ggml_get_tensor.restype = ctypes.c_void_p
    ggml.ggml_get_data.argtypes = [ctypes.c_void_p]
    ggml.ggml_get_data.restype = ctypes.c_void_p
    ggml.ggml_nbytes.argtypes = [ctypes.c_void_p]
    ggml.ggml_nbytes.restype = ctypes.c_size_t
    ggml.gguf_free.argtypes = [ctypes.c_void_p]
    ggml.ggml_free.argtypes = [ctypes.c_void_p]
    ctx = ctypes.c_void_p()
    g = ggml.gguf_init_from_file(str(path).encode(), _GGUFInitParams(False, ctypes.pointer(ctx)))
    assert g and ctx.value, "llama.cpp could not read the file"
    ours = GGUFFile(path)
    try:
        for name, b in mats.items():
            t = ggml.ggml_get_tensor(ctx, f"m.{name}".encode())
            assert t and ggml.ggml_nbytes(t) == b.size
            want = llama_dequantize(ggml, name, ggml.ggml_get_data(t), b.shape[0] * 768).reshape(b.shape[0], 768)
            info = ours.tensors[f"m.{name}"]
            assert info.type == iquant.NAMES[name] and tuple(info.shape) == (b.shape[0], 768)
            raw = ours.read_into(info, torch.empty(b.shape[0], iquant.row_bytes(name, 768), dtype=torch.uint8))
            assert_bits_equal(iquant.dequantize_rows(name, raw, 768).numpy(), want)
            assert_bits_equal(iquant.torch_dequantize_rows(info.type, raw, 768).numpy(), want)
            assert np.isfinite(want).all() and np.any(want != 0)
    finally:
        ours.close()
        ggml.gguf_free(g)
        ggml.ggml_free(ctx)


# ---------------------------------------------------------------------------------------
# the native matmul: integer block dot products against Q8_K activations

_X86 = platform.machine().lower() in ("x86_64", "amd64")
DOT_BUILDS = {"native": None, "plain-c": "x86-64"}


@pytest.fixture(params=list(DOT_BUILDS))
def dot_build(request):
    """This CPU's own build and (on x86-64) the plain-C one, swapped in for the block."""
    native()
    march = DOT_BUILDS[request.param]
    if march is None:
        yield iquant.isa()
        return
    if not _X86:
        pytest.skip("x86-64 targets")
    with iquant.variant(march):
        assert iquant.isa() == "scalar"
        yield "scalar"


def _iq_weight(name: str, b: np.ndarray) -> kquant.GGUFWeight:
    bb = iquant.IQ_TYPES[iquant.NAMES[name]][2]
    return kquant.GGUFWeight(iquant.NAMES[name], (b.shape[0], b.shape[1] // bb * 256), torch.from_numpy(b))


def _rel(y, ref) -> float:
    return ((y.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _exact_case(name: str, rows: int, k: int, seed: int):
    """Power-of-two fp16 scales (2^-4) and integer activations whose Q8_K blocks have scale
    exactly 1 (a -127 in each, every other element within +-30): every code, block sum, scale
    product and float32 partial sum is exact, so the result is the integers' alone and must
    equal x . w computed exactly (float64) from gguf-py's weights."""
    rng = np.random.default_rng(seed)
    n, bb = 24, iquant.IQ_TYPES[iquant.NAMES[name]][2]
    b = rng.integers(0, 256, (n * k // 256, bb), dtype=np.uint8)
    b = iquant.set_scales(name, b, np.full(n * k // 256, 0x2C00, dtype=np.uint16)).reshape(n, -1)   # 0x2C00 = 2^-4
    x = rng.integers(-30, 31, (rows, k)).astype(np.float32)
    x.reshape(rows, -1, 256)[:, :, rng.integers(0, 256)] = -127.0
    exact = x.astype(np.float64) @ gguf_py(name, b).astype(np.float64).T
    assert np.array_equal(exact.astype(np.float32).astype(np.float64), exact)     # representable
    return _iq_weight(name, b), torch.from_numpy(x), torch.from_numpy(exact.astype(np.float32))


@pytest.mark.parametrize("act", [8, 16])
@pytest.mark.parametrize("name", TYPES)
def test_every_build_computes_the_same_integers_exactly(dot_build, name, act):
    for rows, k, seed in ((1, 512, 0), (3, 768, 1), (8, 256, 2)):
        w, x, exact = _exact_case(name, rows, k, seed)
        with dispatch.overridden(gguf_act_bits=act):
            y = kquant.linear(x, w)
        assert torch.equal(y, exact), (dot_build, name, rows, k, (y - exact).abs().max().item())
        assert torch.equal(kquant.reference_linear(x, w, act), exact)


ROUNDING = {8: (1e-6, 3e-2), 16: (1e-9, 5e-4)}   # integer activations vs float32: (above, below)


@pytest.mark.parametrize("act", [8, 16])
@pytest.mark.parametrize("name", TYPES)
def test_the_matmul_equals_its_reference_and_the_builds_agree_bit_for_bit(name, act):
    """Random blocks (every grid point in use) and activations, 1..8 rows: the native result is
    reference_linear's math up to float32 summation, the activations really were rounded to
    that precision, and the plain-C build (and two threads) give the very same bits."""
    native()
    b = random_blocks(name, rows=40, nb=3, seed=20)
    b = iquant.set_scales(name, b.reshape(120, -1), np.random.default_rng(1).uniform(0.002, 0.05, 120)
                   .astype(np.float16).view(np.uint16)).reshape(40, -1)
    w = _iq_weight(name, b)
    for rows in (1, 3, 8):
        x = torch.randn(rows, 768, generator=torch.Generator().manual_seed(rows))
        with dispatch.overridden(gguf_act_bits=act):
            y = kquant.linear(x, w)
            ref, exact = kquant.reference_linear(x, w, act), kquant.reference_linear(x, w, 32)
            assert y.shape == (rows, 40) and y.dtype == torch.float32
            assert _rel(y, ref) < 1e-5, (name, rows, act)
            lo, hi = ROUNDING[act]
            assert lo < _rel(ref, exact) < hi
            threads = torch.get_num_threads()
            try:
                torch.set_num_threads(2)
                assert torch.equal(kquant.linear(x, w), y)
            finally:
                torch.set_num_threads(threads)
            if _X86:
                with iquant.variant("x86-64"):
                    assert torch.equal(kquant.linear(x, w), y), (name, rows, act)


@pytest.mark.parametrize("cpu", ["dotprod", "nodot"])
def test_the_arm64_builds_compute_the_matmul_bit_for_bit_as_x86(cpu):
    """The C built for aarch64 (NEON with sdot; ARMv8.0's widening multiplies) on an emulated
    ARM64 CPU: every type, 1 and 3 rows, 8 and 16 bits, the very bits of this CPU's build."""
    import arm64_emulator

    reason = arm64_emulator.available()
    if reason:
        pytest.skip(f"the ARM64 build {reason}")
    native()
    target = arm64_emulator.DOTPROD if cpu == "dotprod" else arm64_emulator.NO_DOTPROD
    image = arm64_emulator.cross_build(iquant.SOURCE, headers=iquant.HEADERS, flags=iquant.EXTRA_FLAGS, cpu=target)
    so = iquant._bind(arm64_emulator.EmulatedLibrary(image))
    assert so.iq_isa().decode() == ("neon-dotprod" if cpu == "dotprod" else "neon")
    for name in TYPES:
        b = random_blocks(name, rows=3, nb=2, seed=40)
        b = iquant.set_scales(name, b.reshape(6, -1), np.full(6, 0x2400, dtype=np.uint16)).reshape(3, -1)
        for rows, act in ((1, 16), (3, 8)):
            x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows))
            here = iquant.native_linear(name, x, torch.from_numpy(b), 512, act)
            there = iquant.native_linear(name, x, torch.from_numpy(b), 512, act, so=so)
            assert torch.equal(here, there), (name, rows, act)


@pytest.mark.parametrize("name", TYPES)
def test_extreme_codes_and_scales_neither_saturate_nor_overflow(dot_build, name):
    """Every field all ones (largest indices, sub-scales, minus signs) or all zeros, a large
    scale, against activation codes +-127."""
    bb = iquant.IQ_TYPES[iquant.NAMES[name]][2]
    b = np.concatenate([np.full((4 * 2, bb), 0xFF, np.uint8), np.zeros((4 * 2, bb), np.uint8)])
    b = iquant.set_scales(name, b, np.full(16, 0x3800, dtype=np.uint16)).reshape(8, -1)    # 0.5
    w = _iq_weight(name, b)
    assert np.isfinite(gguf_py(name, b)).all()
    H.linear_is_its_reference_at_extremes(w, 512)


def test_thirty_two_bit_activations_and_no_library_run_the_float32_tiles(monkeypatch):
    """act 32 (or no library): the exact float32 product of the dequantized weights, and
    reference_linear says so."""
    name = "IQ2_XXS"
    b = random_blocks(name, rows=16, nb=2, seed=30)
    b = iquant.set_scales(name, b.reshape(32, -1), np.full(32, 0x2000, dtype=np.uint16)).reshape(16, -1)
    w = _iq_weight(name, b)
    x = torch.randn(1, 512, generator=torch.Generator().manual_seed(3))
    exact = x @ torch.from_numpy(gguf_py(name, b)).t()
    with dispatch.overridden(gguf_act_bits=32):
        assert torch.allclose(kquant.linear(x, w), exact, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(iquant, "_LIB", None)
    monkeypatch.setattr(iquant, "_TRIED", True)
    with dispatch.overridden(gguf_act_bits=16):
        if kquant._native():
            assert torch.allclose(kquant.linear(x, w), exact, rtol=1e-5, atol=1e-6)
        assert torch.equal(kquant.reference_linear(x, w), kquant.reference_linear(x, w, 32))


def test_bf16_prefill_tiles_of_an_i_quant_are_its_exact_weights_rounded_to_bf16(monkeypatch):
    """Many bf16 rows under bf16 tiles (forced, so on any CPU): the i-quant's rows dequantized
    exactly (float32) and rounded to bf16, a tile at a time."""
    name = "IQ3_S"
    b = random_blocks(name, rows=40, nb=2, seed=32)
    b = iquant.set_scales(name, b.reshape(80, -1), np.full(80, 0x2000, dtype=np.uint16)).reshape(40, -1)
    w = _iq_weight(name, b)
    monkeypatch.setattr(kquant, "TILE_BYTES", 16 * 2 * 512)        # 16 rows a tile: 3 tiles, the last short
    x = torch.randn(12, 512, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    rounded = x.double() @ torch.from_numpy(gguf_py(name, b)).to(torch.bfloat16).double().t()
    with dispatch.overridden(gguf_prefill=torch.bfloat16):
        y = kquant.linear(x, w)
    assert y.dtype == torch.bfloat16
    assert ((y.double() - rounded).abs().max() / rounded.abs().max()).item() < 2 ** -7


def test_the_matmul_refuses_what_it_cannot_take():
    native()
    b = torch.from_numpy(random_blocks("IQ1_S", rows=2, nb=1, seed=31))
    for x, act in ((torch.zeros(9, 256), 16), (torch.zeros(1, 256), 32), (torch.zeros(1, 512), 8)):
        with pytest.raises(ValueError):
            iquant.native_linear("IQ1_S", x, b, 256, act)


# ---------------------------------------------------------------------------------------
# the fused MoE step (kernels/csrc/kquant.c's kq_moe) with experts held as i-quants

# gate, up, down types (ggml ids), intermediate size: i-quants alone, and beside K-/32-blocks
MOE = {"IQ2_XXS": (16, 16, 16, 256), "IQ1_S-IQ2_XXS": (19, 19, 16, 512), "IQ3_S-Q2_K": (21, 21, 10, 256),
       "Q4_K-IQ1_M": (12, 12, 29, 256), "IQ2_S-IQ3_XXS-Q8_0": (22, 18, 8, 256)}


def _moe_weight(type_id: int, n: int, k: int, rng) -> kquant.GGUFWeight:
    if type_id in iquant.IQ_TYPES:
        return _iq_weight(iquant.IQ_TYPES[type_id][0], _small_scale_blocks(iquant.IQ_TYPES[type_id][0], n, k // 256, rng))
    _, bs, bb = kquant.TYPES[type_id]
    raw = rng.integers(0, 256, (n, k // bs, bb), dtype=np.uint8)
    for at in H.FP16_SCALES.get(type_id, (0,)):
        raw[..., at:at + 2] = (rng.uniform(0.002, 0.02, (n, k // bs))).astype(np.float16).view(np.uint8).reshape(n, k // bs, 2)
    return kquant.GGUFWeight(type_id, (n, k), torch.from_numpy(raw.reshape(n, -1)))


@pytest.mark.parametrize("act", [8, 16, 32])
@pytest.mark.parametrize("kinds", list(MOE))
def test_the_fused_moe_step_takes_i_quant_experts_and_equals_them_one_by_one(dot_build, kinds, act):
    """The routed experts of one token in one native call, i-quant matrices read by the i-quant
    library's row dot (by address; this CPU's build and the plain-C one): the experts' reference
    math (activations rounded as the call rounds them); at 32 bits they run one by one."""
    tg, tu, td, inter = MOE[kinds]
    E, hidden = 5, 512
    rng = np.random.default_rng(len(kinds) + act)
    gates = [_moe_weight(tg, inter, hidden, rng) for _ in range(E)]
    ups = [_moe_weight(tu, inter, hidden, rng) for _ in range(E)]
    downs = [_moe_weight(td, hidden, inter, rng) for _ in range(E)]
    assert kquant.GGUFExperts.fits(gates, ups, downs)
    fused = kquant.GGUFExperts(gates, ups, downs)
    x = torch.randn(1, hidden, generator=torch.Generator().manual_seed(act))
    idx, wts = torch.tensor([[3, 0, 4]]), torch.tensor([[0.5, 0.3, 0.2]])
    with dispatch.overridden(gguf_act_bits=act):
        y = fused(x, wts, idx)
        one_by_one = fused._one_by_one(x, wts, idx)
    ref = torch.zeros(1, hidden, dtype=torch.float64)
    for e, wt in zip(idx[0].tolist(), wts[0].tolist()):
        h = F.silu(kquant.reference_linear(x, gates[e], act)) * kquant.reference_linear(x, ups[e], act)
        ref += wt * kquant.reference_linear(h, downs[e], act).double()
    # integer activations: h's float32 rounding may move one of its codes by one step
    assert _rel(y, ref) < {8: 1e-3, 16: 1e-4, 32: 1e-5}[act], (kinds, act)
    assert _rel(one_by_one, ref) < {8: 1e-3, 16: 1e-4, 32: 1e-5}[act]
    assert _rel(y, one_by_one) < {8: 1e-3, 16: 1e-4, 32: 0.0}[act] or torch.equal(y, one_by_one)


def test_the_fused_moe_step_refuses_i_quants_it_cannot_read():
    native()
    rng = np.random.default_rng(5)
    w = [_moe_weight(16, 256, 256, rng) for _ in range(2)]
    fused = kquant.GGUFExperts(w, w, w)
    x, idx, wts = torch.randn(1, 256), torch.tensor([[1]]), torch.tensor([[1.0]])
    y = torch.empty(256)
    so = kquant.lib()
    for act, addr in ((16, 0), (32, ctypes.cast(iquant.lib().iq_row_dot, ctypes.c_void_p).value)):
        rc = so.kq_moe(fused.table.data_ptr(), fused.types.data_ptr(), *fused.strides, 256, 256, idx.data_ptr(),
                       wts.data_ptr(), 1, -1, x.data_ptr(), y.data_ptr(), 1, act, addr, fused.grids.data_ptr())
        assert rc == -1


# ---------------------------------------------------------------------------------------
# the engine on a DeepSeek GGUF whose matrices are i-quants


def _small_scale_blocks(name: str, rows: int, nb: int, rng) -> np.ndarray:
    """Random blocks of ``name`` with a small positive fp16 scale (a model that stays finite)."""
    b = random_blocks(name, rows, nb, seed=int(rng.integers(1 << 30)))
    d = (rng.uniform(0.002, 0.02, rows * nb)).astype(np.float16).view(np.uint16)
    b = iquant.set_scales(name, b.reshape(rows * nb, -1), d)
    return b.reshape(rows, nb * b.shape[1])


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from tests.tiny_checkpoints import write_tiny_v3

    # every matrix's rows whole 256-blocks but attn_k_b's (kept float32 here, as llama.cpp keeps
    # rows it cannot block)
    return write_tiny_v3(tmp_path_factory.mktemp("iq") / "hf", hidden_size=256, intermediate_size=512,
                         moe_intermediate_size=256, q_lora_rank=256, kv_lora_rank=256, qk_nope_head_dim=32,
                         qk_rope_head_dim=16, v_head_dim=64, n_routed_experts=4, num_experts_per_tok=2,
                         n_group=2, topk_group=1, rope_scaling=None)


@pytest.mark.parametrize("name", TYPES)
def test_a_deepseek_gguf_of_i_quants_runs_in_our_engine_as_its_exact_weights_and_beside_llama_cpp(
        name, tiny_hf, tmp_path):
    """Every matrix whose rows are whole 256-blocks (embedding, attention, dense and expert
    MLPs, head) as random blocks of one i-quant type: our engine's prefill (float32 tiles of the
    exact weights) gives the logits of the same model stored as float32, and so does decode
    with float32 activations (act 32); decode at the default 16-bit activations (the native
    integer dot products) is at least as close to them as llama.cpp on the very same file."""
    from bench.gguf_deepseek2 import gguf_tensors_from_hf, hf_tokenizer_fields, write_deepseek2_gguf
    from local_engine import Engine

    cfg = H.hf_config(tiny_hf)
    tensors = gguf_tensors_from_hf(H.hf_state(tiny_hf), cfg)
    qtype, bb = gguf.GGMLQuantizationType[name], iquant.IQ_TYPES[iquant.NAMES[name]][2]
    rng = np.random.default_rng(7)
    blocked = []
    for tname, (kind, arr) in list(tensors.items()):
        if arr.ndim >= 2 and arr.shape[-1] % 256 == 0 and not tname.endswith(("_norm.weight", "ffn_gate_inp.weight")):
            rows = int(np.prod(arr.shape[:-1]))
            blocks = _small_scale_blocks(name, rows, arr.shape[-1] // 256, rng)
            tensors[tname] = ("blocks", qtype, blocks.reshape(*arr.shape[:-1], arr.shape[-1] // 256 * bb))
            blocked.append(tname)
    assert {"token_embd.weight", "output.weight", "blk.1.ffn_gate_exps.weight", "blk.1.ffn_down_exps.weight",
            "blk.0.attn_q_b.weight"} <= set(blocked)
    path = tmp_path / f"{name}.gguf"
    write_deepseek2_gguf(path, cfg, tensors, tokenizer=hf_tokenizer_fields(tiny_hf))
    ref = H.write_dequantized(path, tmp_path / "ref.gguf", tiny_hf)      # the exact weights, as F32
    ids = list(range(6, 30))
    ours = Engine.load(path, dtype="float32", max_seq_len=64)
    exact_ours = Engine.load(ref, dtype="float32", max_seq_len=64)
    with dispatch.overridden(gguf_act_bits=32):          # float activations everywhere: the experts that
        prefill = ours.forward(torch.tensor([ids]))[0].numpy()   # see <= 8 tokens too (else integer dots)
    exact = exact_ours.forward(torch.tensor([ids]))[0].numpy()
    assert np.isfinite(exact).all() and np.abs(exact).max() > 0
    assert np.abs(prefill - exact).max() <= 1e-4 * np.abs(exact).max()
    ours.reset()
    prefill16 = ours.forward(torch.tensor([ids]))[0].numpy()    # the default: few-token experts native

    def decode():
        ours.reset()
        return np.stack([ours.forward(torch.tensor([[t]]), start_pos=i)[0, -1].numpy() for i, t in enumerate(ids)])

    with dispatch.overridden(gguf_act_bits=32):
        decoded32 = decode()
    assert np.abs(decoded32 - exact).max() <= 1e-4 * np.abs(exact).max()
    decoded = decode()                                   # the default: 16-bit activations
    if iquant.lib() is not None and kquant._native() and kquant.act_bits() != 32:
        assert not np.array_equal(decoded, decoded32)    # the integer dot products really ran
    theirs, exact_llama = H.llama_logits(path, ids), H.llama_logits(ref, ids)
    assert np.abs(exact_llama - exact).max() <= 1e-3 * np.abs(exact).max()   # the same model, both engines
    (cos_l, _), (cos_o, _) = H.agreement(exact_llama, theirs), H.agreement(exact_llama, decoded)
    cos_p = H.agreement(exact_llama, prefill16)[0]
    print(f"{name}: cosine to the exact model: duet decode {cos_o:.7f} (prefill {cos_p:.7f}), llama.cpp {cos_l:.7f}")
    # 15-bit activation codes through every matrix of a random-weight model: 0.9996..0.99998 here
    # (llama.cpp's 8-bit ones: 0.2..0.7); the float32 path's exactness is asserted above
    assert cos_o >= cos_l and cos_o > 0.999, (cos_o, cos_l)
    assert cos_p >= cos_l, (cos_p, cos_l)
