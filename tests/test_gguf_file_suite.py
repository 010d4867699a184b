"""The GGUF container as gguf-py (llama.cpp's reference writer/reader) and llama.cpp's own tests
exercise it: every metadata value type, alignment and data offsets, GGML dimension order,
versions 2 and 3, big-endian files, truncation at every byte, wrong magic, absurd counts and
lengths (no huge allocation), duplicate names, tensor types we cannot run; and the loader's and
tokenizer's handling of what the metadata says. Files are written with gguf-py's GGUFWriter, or
by hand with struct for the malformed ones, and read back by ours and by gguf-py's GGUFReader."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from local_engine.errors import ModelError
from local_engine.gguf_file import GGML_TYPES, GGUFFile, summarize

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFEndian, GGUFReader, GGUFValueType, GGUFWriter  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

V = GGUFValueType
ROOT = Path(__file__).resolve().parents[1]


def write(path, kv=(), tensors=(), *, alignment=None, endianess=GGUFEndian.LITTLE, arch="deepseek2") -> Path:
    """kv: (key, value, vtype, sub_type); tensors: (name, array, raw_dtype or None)."""
    w = GGUFWriter(str(path), arch, endianess=endianess)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, val, vtype, sub in kv:
        w.add_key_value(key, val, vtype, sub)
    for name, arr, raw in tensors:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def refused(path, *fragments) -> str:
    """GGUFFile(path) raises our one-line ModelError naming the file and each fragment."""
    with pytest.raises(ModelError) as e:
        GGUFFile(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


# ---------------------------------------------------------------------------------------
# metadata values

ALL_KV = [
    ("t.u8", 255, V.UINT8, None), ("t.i8", -128, V.INT8, None),
    ("t.u16", 65535, V.UINT16, None), ("t.i16", -32768, V.INT16, None),
    ("t.u32", 2**32 - 1, V.UINT32, None), ("t.i32", -2**31, V.INT32, None),
    ("t.u64", 2**64 - 1, V.UINT64, None), ("t.i64", -2**63, V.INT64, None),
    ("t.f32", 0.1, V.FLOAT32, None), ("t.f64", 0.1, V.FLOAT64, None),
    ("t.true", True, V.BOOL, None), ("t.false", False, V.BOOL, None),
    ("t.str", "héllo 世界 🙂 <｜User｜>", V.STRING, None), ("t.empty_str", "", V.STRING, None),
    ("t.ключ.鍵", "non-ASCII key", V.STRING, None),
    ("t.a_u8", [0, 7, 255], V.ARRAY, V.UINT8), ("t.a_i8", [-128, 0, 127], V.ARRAY, V.INT8),
    ("t.a_u16", [0, 65535], V.ARRAY, V.UINT16), ("t.a_i16", [-32768, 32767], V.ARRAY, V.INT16),
    ("t.a_u32", [1, 2**32 - 1], V.ARRAY, V.UINT32), ("t.a_i32", [-2**31, 2**31 - 1], V.ARRAY, V.INT32),
    ("t.a_u64", [0, 2**64 - 1], V.ARRAY, V.UINT64), ("t.a_i64", [-2**63, 2**63 - 1], V.ARRAY, V.INT64),
    ("t.a_f32", [0.5, -1e-3, 3.4e38], V.ARRAY, V.FLOAT32), ("t.a_f64", [0.1, -2.5e300], V.ARRAY, V.FLOAT64),
    ("t.a_bool", [True, False, True], V.ARRAY, V.BOOL),
    ("t.a_str", ["a", "", "ünïcödé", "日本語", "🙂 spaced out"], V.ARRAY, V.STRING),
]


def test_every_metadata_value_type_reads_as_gguf_py_reads_it(tmp_path):
    path = write(tmp_path / "kv.gguf", ALL_KV)
    ours = GGUFFile(path).meta
    theirs = {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if not k.startswith("GGUF.")}
    assert ours == theirs
    # exact values, as their types hold them
    assert ours["t.u64"] == 2**64 - 1 and ours["t.i64"] == -2**63 and ours["t.a_u64"] == [0, 2**64 - 1]
    assert ours["t.f32"] == float(np.float32(0.1)) and ours["t.f64"] == 0.1
    assert ours["t.true"] is True and ours["t.false"] is False and ours["t.a_bool"] == [True, False, True]
    assert all(type(v) is bool for v in ours["t.a_bool"])
    assert ours["t.str"] == "héllo 世界 🙂 <｜User｜>" and ours["t.ключ.鍵"] == "non-ASCII key"
    assert ours["t.a_str"] == ["a", "", "ünïcödé", "日本語", "🙂 spaced out"]
    assert ours["t.a_f64"] == [0.1, -2.5e300] and ours["t.empty_str"] == ""
    assert type(ours["t.u8"]) is int and type(ours["t.a_i16"][0]) is int and type(ours["t.a_f32"][0]) is float


def test_nested_arrays_keep_their_structure(tmp_path):
    # gguf-py writes arrays of arrays (its reader's contents() flattens them; the file does not)
    path = write(tmp_path / "nest.gguf", [("n.ints", [[1, 2], [3, 4, 5]], V.ARRAY, None),
                                          ("n.strs", [["a", "ü"], ["日本"]], V.ARRAY, None),
                                          ("n.deep", [[[1.5]], [[2.5, -1.0]]], V.ARRAY, None)])
    meta = GGUFFile(path).meta
    assert meta["n.ints"] == [[1, 2], [3, 4, 5]]
    assert meta["n.strs"] == [["a", "ü"], ["日本"]]
    assert meta["n.deep"] == [[[1.5]], [[2.5, -1.0]]]
    r = GGUFReader(str(path))
    assert r.fields["n.ints"].types == [V.ARRAY, V.ARRAY, V.INT32]
    assert r.fields["n.strs"].contents() == ["a", "ü", "日本"]


# ---------------------------------------------------------------------------------------
# hand-written files

def _s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key.encode()) + struct.pack("<I", vtype) + payload


def _tinfo(name: str, dims, ggml_type: int, offset: int) -> bytes:
    return _s(name.encode()) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) \
        + struct.pack("<IQ", ggml_type, offset)


def _put(tmp_path, name, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_an_empty_array_and_arrays_by_hand_read_back(tmp_path):
    # gguf-py's writer refuses empty arrays; llama.cpp's tests write them
    data = (_header(0, 3) + _kv("e.ints", 9, struct.pack("<IQ", 5, 0))
            + _kv("e.strs", 9, struct.pack("<IQ", 8, 0))
            + _kv("e.strs2", 9, struct.pack("<IQ", 8, 2) + _s("€".encode()) + _s(b"")))
    p = _put(tmp_path, "e.gguf", data)
    assert GGUFFile(p).meta == {"e.ints": [], "e.strs": [], "e.strs2": ["€", ""]}
    assert GGUFReader(str(p)).fields["e.strs2"].contents() == ["€", ""]


# ---------------------------------------------------------------------------------------
# tensor directory: shapes, offsets, alignment, bytes

def _tensors(rng):
    return [
        ("v.f32", rng.standard_normal(7).astype(np.float32), None),                  # 1-D, odd length
        ("m.f16", rng.standard_normal((3, 5)).astype(np.float16), None),
        ("c.f32", rng.standard_normal((2, 3, 4)).astype(np.float32), None),
        ("h.f32", rng.standard_normal((2, 1, 3, 2)).astype(np.float32), None),         # 4-D
        ("q.q8_0", quantize(rng.standard_normal((3, 64)).astype(np.float32), Q.Q8_0), Q.Q8_0),
        ("e.q4_0", quantize(rng.standard_normal((2, 3, 32)).astype(np.float32), Q.Q4_0), Q.Q4_0),
        ("b.bf16", quantize(rng.standard_normal((4, 6)).astype(np.float32), Q.BF16), Q.BF16),
        ("i.i32", np.arange(-5, 6, dtype=np.int32), None),
        ("d.f64", rng.standard_normal((2, 3)), None),
    ]


@pytest.mark.parametrize("alignment", [None, 1, 8, 64, 256, 4096])
def test_the_tensor_directory_and_bytes_match_gguf_py_at_any_alignment(alignment, tmp_path):
    path = write(tmp_path / "t.gguf", [("x.pad", "odd-length string", V.STRING, None)],
                 _tensors(np.random.default_rng(0)), alignment=alignment)
    ours, theirs = GGUFFile(path), GGUFReader(str(path))
    align = alignment or 32
    assert theirs.alignment == align
    assert theirs.data_offset % align == 0
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    raw = path.read_bytes()
    for t in theirs.tensors:
        info = ours.tensors[t.name]
        assert info.shape == tuple(reversed(t.shape.tolist())), t.name   # ggml's ne, outermost last
        assert info.type == int(t.tensor_type) and info.type_name == t.tensor_type.name
        assert info.offset == t.data_offset and info.nbytes == t.n_bytes
        assert (info.offset - theirs.data_offset) % align == 0
        out = torch.empty(info.nbytes, dtype=torch.uint8)
        ours.read_into(info, out)
        assert out.numpy().tobytes() == np.ascontiguousarray(t.data).tobytes() == \
            raw[info.offset:info.offset + info.nbytes]
    ours.close()


def test_shapes_are_ggml_order_reversed(tmp_path):
    # ne = [5, 3, 2] on disk: the row length (5) first; torch order (2, 3, 5)
    p = _put(tmp_path, "s.gguf", _header(1, 0) + _tinfo("x", [5, 3, 2], 0, 0) + b"\0" * 64 + b"\0" * 120)
    assert GGUFFile(p).tensors["x"].shape == (2, 3, 5)
    assert GGUFReader(str(p)).tensors[0].data.shape == (2, 3, 5)


def test_version_2_reads_like_version_3(tmp_path):
    v3 = write(tmp_path / "v3.gguf", ALL_KV, _tensors(np.random.default_rng(1)))
    data = bytearray(v3.read_bytes())
    assert data[4:8] == struct.pack("<I", 3)
    data[4:8] = struct.pack("<I", 2)
    v2 = _put(tmp_path, "v2.gguf", bytes(data))
    a, b = GGUFFile(v3), GGUFFile(v2)
    assert (a.version, b.version) == (3, 2)
    assert a.meta == b.meta and a.tensors.keys() == b.tensors.keys()
    assert all(a.tensors[n].offset == b.tensors[n].offset for n in a.tensors)
    assert GGUFReader(str(v2)).fields["GGUF.version"].contents() == 2


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFF])
def test_other_versions_are_refused_by_number(version, tmp_path):
    p = _put(tmp_path, "v.gguf", _header(0, 0, version))
    refused(p, f"version {version}")


def test_a_big_endian_file_is_refused_as_big_endian(tmp_path):
    path = write(tmp_path / "be.gguf", [("x.n", 7, V.UINT32, None)],
                 [("w", np.arange(8, dtype=np.float32), None)], endianess=GGUFEndian.BIG)
    assert GGUFReader(str(path)).endianess == GGUFEndian.BIG   # a valid file, just not ours
    refused(path, "big-endian")


@pytest.mark.parametrize("data", [b"", b"GG", b"GGUG" + b"\0" * 20, b"FUGG" + b"\0" * 20, b"\x00GGUF" + b"\0" * 20,
                                  b"PK\x03\x04" + b"\0" * 20],
                         ids=["empty", "short", "ggug", "reversed", "shifted", "zip"])
def test_a_wrong_magic_is_refused(data, tmp_path):
    refused(_put(tmp_path, "m.gguf", data), "not a GGUF file")


def test_a_file_cut_short_anywhere_is_refused_with_a_one_line_error(tmp_path):
    path = write(tmp_path / "full.gguf", ALL_KV + [("n.nest", [["a"], ["b", "c"]], V.ARRAY, None)],
                 _tensors(np.random.default_rng(2)))
    data = path.read_bytes()
    r = GGUFReader(str(path))
    data_start = r.data_offset
    last_end = max(t.data_offset + t.n_bytes for t in r.tensors)
    assert last_end <= len(data) < last_end + 32   # gguf-py pads after the last tensor too
    cut = tmp_path / "cut.gguf"
    for n in range(last_end):
        cut.write_bytes(data[:n])
        with pytest.raises(ModelError) as e:
            GGUFFile(cut)
        msg = str(e.value)
        assert str(cut) in msg and "\n" not in msg, (n, msg)
        if n < 4:
            assert "bad magic" in msg, (n, msg)
        elif n < data_start - 31:   # inside the header (metadata, tensor directory): before any padding
            assert "truncated" in msg, (n, msg)
        elif n >= data_start:       # tensor data cut short: names a tensor it lacks
            assert "runs past the end of the file" in msg and any(t.name in msg for t in r.tensors), (n, msg)
    cut.write_bytes(data[:last_end])   # the trailing padding is optional
    assert GGUFFile(cut).tensors.keys() == GGUFFile(path).tensors.keys()


# ---------------------------------------------------------------------------------------
# malformed headers: absurd counts and lengths, bad values

ABSURD = {
    "tensor count 2^63": _header(2**63, 0),
    "kv count 2^64-1": _header(0, 2**64 - 1),
    "key length 2^63": _header(0, 1) + struct.pack("<Q", 2**63),
    "key length 64 MiB": _header(0, 1) + struct.pack("<Q", 1 << 26) + b"abc",
    "string value 2^40": _header(0, 1) + _s(b"k") + struct.pack("<IQ", 8, 2**40),
    "string value 60 MiB": _header(0, 1) + _s(b"k") + struct.pack("<IQ", 8, 60 << 20) + b"x" * 10,
    "u64 array 2^62": _header(0, 1) + _s(b"k") + struct.pack("<IIQ", 9, 10, 2**62),
    "u8 array 2^31": _header(0, 1) + _s(b"k") + struct.pack("<IIQ", 9, 0, 2**31) + b"\0" * 10,
    "string array 2^62": _header(0, 1) + _s(b"k") + struct.pack("<IIQ", 9, 8, 2**62) + _s(b"a") * 3,
    "nested array 2^62": _header(0, 1) + _s(b"k") + struct.pack("<IIQ", 9, 9, 2**62) + struct.pack("<IQ", 4, 0) * 3,
    "n_dims 2^32-1": _header(1, 0) + _s(b"t") + struct.pack("<I", 2**32 - 1) + b"\0" * 64,
    "dims 2^40 x 2^40": _header(1, 0) + _tinfo("t", [2**40, 2**40], 0, 0) + b"\0" * 64,
    "offset 2^63": _header(1, 0) + _tinfo("t", [4], 0, 2**63) + b"\0" * 64,
    "tensor name 2^50": _header(1, 0) + struct.pack("<Q", 2**50) + b"t",
}


@pytest.mark.parametrize("case", list(ABSURD))
def test_absurd_counts_and_lengths_are_refused_without_allocating_them(case, tmp_path):
    p = _put(tmp_path, "a.gguf", ABSURD[case])
    tracemalloc.start()
    try:
        refused(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{case}: {peak / 2**20:.1f} MiB allocated"


def test_arrays_nested_absurdly_deep_are_refused(tmp_path):
    deep = _header(0, 1) + _s(b"k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 5000 + struct.pack("<IQ", 4, 0)
    refused(_put(tmp_path, "d.gguf", deep), "nested")


BAD = {
    "unknown value type": (_header(0, 1) + _kv("k", 13, b"\0" * 8), "unknown value type 13"),
    "unknown array item type": (_header(0, 1) + _kv("k", 9, struct.pack("<IQ", 99, 1) + b"\0" * 8),
                                "unknown value type 99"),
    "invalid UTF-8 value": (_header(0, 1) + _kv("k", 8, _s(b"\xff\xfe")), "utf-8"),
    "invalid UTF-8 key": (_header(0, 1) + _s(b"k\xc3") + struct.pack("<II", 4, 1), "utf-8"),
    "duplicate key": (_header(0, 2) + _kv("k", 4, struct.pack("<I", 1)) + _kv("k", 4, struct.pack("<I", 2)),
                      "'k' appears twice"),
    "duplicate tensor": (_header(2, 0) + _tinfo("w", [8], 0, 0) + _tinfo("w", [8], 0, 32) + b"\0" * 128,
                         "tensor w appears twice"),
    "alignment 0": (_header(0, 1) + _kv("general.alignment", 4, struct.pack("<I", 0)), "general.alignment 0"),
    "alignment 48": (_header(1, 1) + _kv("general.alignment", 4, struct.pack("<I", 48)) + _tinfo("w", [4], 0, 0)
                     + b"\0" * 128, "general.alignment 48"),
    "alignment string": (_header(0, 1) + _kv("general.alignment", 8, _s(b"32")), "general.alignment '32'"),
    "misaligned offset": (_header(2, 0) + _tinfo("a", [3], 0, 0) + _tinfo("b", [3], 0, 12) + b"\0" * 128,
                          "tensor b: data offset 12"),
    "5 dims": (_header(1, 0) + _tinfo("w", [1, 1, 1, 1, 1], 0, 0) + b"\0" * 64, "tensor w: 5 dimensions"),
    "unknown ggml type": (_header(1, 0) + _tinfo("blk.0.w", [32], 99, 0) + b"\0" * 64,
                          "tensor blk.0.w: unknown ggml type 99"),
    "partial Q8_0 block": (_header(1, 0) + _tinfo("w", [48, 2], 8, 0) + b"\0" * 200,
                           "tensor w: row of 48 is not whole Q8_0 blocks"),
    "Q4_K row of 32": (_header(1, 0) + _tinfo("w", [32], 12, 0) + b"\0" * 200, "not whole Q4_K blocks"),
    "Q8_0 scalar": (_header(1, 0) + _tinfo("w", [], 8, 0) + b"\0" * 200, "not whole Q8_0 blocks"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_headers_are_refused_naming_the_problem(case, tmp_path):
    data, fragment = BAD[case]
    refused(_put(tmp_path, "b.gguf", data), fragment)


def test_alignment_of_any_power_of_two_is_honoured_by_hand(tmp_path):
    # header ends at 4+4+8+8 + kv + tensor info; data starts at the next multiple of 128
    head = _header(1, 1) + _kv("general.alignment", 4, struct.pack("<I", 128)) + _tinfo("w", [4], 0, 128)
    start = -(-len(head) // 128) * 128
    vals = np.array([1.5, -2, 3.25, 4], dtype=np.float32)
    data = head + b"\0" * (start - len(head)) + b"\x7f" * 128 + vals.tobytes()
    p = _put(tmp_path, "a.gguf", data)
    info = GGUFFile(p).tensors["w"]
    assert info.offset == start + 128 == GGUFReader(str(p)).tensors[0].data_offset
    out = torch.empty(4, dtype=torch.float32)
    GGUFFile(p).read_into(info, out)
    assert out.tolist() == vals.tolist()


def test_our_type_table_matches_gguf_py_for_every_type_it_knows():
    # every type gguf-py knows is named (so a file of a type we cannot run says which type)
    known = {int(t): t for t in Q}
    assert set(GGML_TYPES) == set(known)
    for tid, (name, block, nbytes) in GGML_TYPES.items():
        assert known[tid].name == name
        if name == "Q8_1":   # gguf-py's table has the old float d/s block (40); ggml's is 2 x fp16 + 32
            assert (block, nbytes) == (32, 36)
            continue
        assert gguf.GGML_QUANT_SIZES[known[tid]] == (block, nbytes), name


# ---------------------------------------------------------------------------------------
# quantized tensors: what the loader reads equals gguf.quants.dequantize

def _random_blocks(qtype: Q, rows: int, k: int, rng) -> np.ndarray:
    """Random bytes with sane fp16 scales (any other bytes are a valid block)."""
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, k // block, nbytes), dtype=np.uint8)
    half = (rng.standard_normal((rows, k // block)) * 0.05).astype(np.float16).view(np.uint8)
    half = half.reshape(rows, k // block, 2)
    if qtype == Q.Q6_K:
        raw[..., 208:210] = half
    else:
        raw[..., 0:2] = half
        raw[..., 2:4] = half[..., ::-1]   # Q4_K's dmin
    return raw.reshape(rows, -1)


def _quant_file(tmp_path, rng) -> Path:
    x = rng.standard_normal((2, 3, 256)).astype(np.float32)
    k4 = _random_blocks(Q.Q4_K, 6, 512, rng).reshape(2, 3, -1)
    tensors = [
        ("q8_0", quantize(x, Q.Q8_0), Q.Q8_0), ("q4_0", quantize(x, Q.Q4_0), Q.Q4_0),
        ("q4_k", k4, Q.Q4_K), ("q6_k", _random_blocks(Q.Q6_K, 4, 256, rng), Q.Q6_K),
        ("f16", x.astype(np.float16), None), ("bf16", quantize(x, Q.BF16), Q.BF16), ("f32", x, None),
    ]
    return write(tmp_path / "q.gguf", [("x.pad", "abc", V.STRING, None)], tensors, alignment=64)


def test_each_tensor_type_dequantizes_exactly_as_gguf_py(tmp_path):
    from kernels import kquant
    from local_engine.gguf_loader import _Reader

    path = _quant_file(tmp_path, np.random.default_rng(3))
    f = GGUFFile(path)
    r = _Reader(f, torch.float32, torch.device("cpu"))
    seen = set()
    for t in GGUFReader(str(path)).tensors:
        info = f.tensors[t.name]
        shape = tuple(reversed(t.shape.tolist()))
        assert info.shape == shape
        exact = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        got = r.dense(info)
        assert got.shape == shape and got.dtype == torch.float32
        assert np.array_equal(got.numpy(), exact), t.name
        assert torch.equal(r.dense(info, torch.bfloat16), torch.from_numpy(exact.copy()).to(torch.bfloat16)), t.name
        if info.type in kquant.TYPES:   # kept quantized: the very bytes of the file
            w = r.weight(info)
            assert isinstance(w, kquant.GGUFWeight) and w.shape == (math.prod(shape[:-1]), shape[-1])
            assert w.data.numpy().tobytes() == np.ascontiguousarray(t.data).tobytes(), t.name
        seen.add(t.tensor_type.name)
    f.close()
    assert seen == {"Q8_0", "Q4_0", "Q4_K", "Q6_K", "F16", "BF16", "F32"}


# ---------------------------------------------------------------------------------------
# a deepseek2 file through Engine.load

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests import gguf_helpers as H
    from tests.tiny_checkpoints import write_tiny_v3

    d = tmp_path_factory.mktemp("tiny")
    hf = write_tiny_v3(d / "hf", rope_scaling=None)
    return H.write_gguf(hf, d / "m.gguf")


def rewrite(src, dst, *, drop=(), kv=(), tensors=None) -> Path:
    """src's metadata and tensors into dst, less the keys in ``drop``, plus ``kv``; ``tensors``
    maps a name to its replacement (array, raw_dtype)."""
    r = GGUFReader(str(src))
    w = GGUFWriter(str(dst), "deepseek2")
    replaced = {k for k, *_ in kv}
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture" or f.name in drop or f.name in replaced:
            continue
        w.add_key_value(f.name, f.contents(), f.types[0], f.types[-1] if len(f.types) > 1 else None)
    for key, val, vtype, sub in kv:
        w.add_key_value(key, val, vtype, sub)
    for t in r.tensors:
        arr, raw = (tensors or {}).get(t.name, (t.data, t.tensor_type))
        w.add_tensor(t.name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(dst)


def _load_refused(path, *fragments) -> str:
    from local_engine import Engine

    with pytest.raises(ModelError) as e:
        Engine.load(path, dtype="float32", max_seq_len=16)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


def test_the_tiny_file_loads_and_its_tokenizer_and_template_match_the_metadata(tiny):
    from local_engine import Engine

    r = GGUFReader(str(tiny))
    eng = Engine.load(tiny, dtype="float32", max_seq_len=16)
    tok = eng.tokenizer
    assert tok.chat_template == r.fields["tokenizer.chat_template"].contents()
    assert "<｜User｜>" in tok.chat_template   # non-ASCII UTF-8 survives the round trip
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    assert tok.bos_token == tokens[r.fields["tokenizer.ggml.bos_token_id"].contents()]
    assert tok.eos_token == tokens[r.fields["tokenizer.ggml.eos_token_id"].contents()]
    assert eng.args.vocab_size == r.fields["deepseek2.vocab_size"].contents()


@pytest.mark.parametrize("name,arr,raw", [
    ("F64", lambda a: a.astype(np.float64), None),
    ("I32", lambda a: np.zeros(a.shape, np.int32), None),
    ("MXFP4", lambda a: np.zeros(a.shape[:-1] + (a.shape[-1] // 32 * 17,), np.uint8), Q.MXFP4),
    ("NVFP4", lambda a: np.zeros(a.shape[:-1] + (a.shape[-1] // 64 * 36,), np.uint8), Q.NVFP4),
])
def test_a_tensor_type_we_cannot_run_is_refused_naming_tensor_and_type(name, arr, raw, tiny, tmp_path):
    r = GGUFReader(str(tiny))
    # a matrix whose rows are whole 32-blocks
    t = next(t for t in r.tensors if t.tensor_type == Q.F32 and len(t.shape) == 2 and int(t.shape[0]) % 32 == 0
             and t.name.startswith("blk.1."))
    data = np.asarray(t.data, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
    bad = rewrite(tiny, tmp_path / "bad.gguf", tensors={t.name: (arr(data), raw)})
    assert {x.name: x.tensor_type.name for x in GGUFReader(str(bad)).tensors}[t.name] == name
    _load_refused(bad, t.name, name, "llama.cpp")
    s = summarize(bad)
    assert not s.runs_locally and (t.name, name) in s.unsupported


@pytest.mark.parametrize("key,val,vtype,sub", [
    ("deepseek2.block_count", "two", V.STRING, None),
    ("deepseek2.embedding_length", [64, 64], V.ARRAY, V.UINT32),
    ("deepseek2.attention.layer_norm_rms_epsilon", "1e-6", V.STRING, None),
    ("deepseek2.expert_weights_scale", ["x"], V.ARRAY, V.STRING),
])
def test_a_metadata_value_of_the_wrong_type_is_refused_naming_the_key(key, val, vtype, sub, tiny, tmp_path):
    bad = rewrite(tiny, tmp_path / "bad.gguf", kv=[(key, val, vtype, sub)])
    _load_refused(bad, repr(key), "not a number")


def test_a_non_integer_split_count_or_context_length_is_not_a_crash(tiny, tmp_path):
    bad = rewrite(tiny, tmp_path / "bad.gguf", kv=[("split.count", "3", V.STRING, None),
                                                   ("deepseek2.context_length", "long", V.STRING, None)])
    _load_refused(bad, "split.count")
    s = summarize(bad)   # what doctor and discovery read
    assert s.context_length is None and s.split == 1


@pytest.mark.parametrize("case", ["types short", "types strings", "merges ints", "tokens ints", "template int"])
def test_tokenizer_metadata_of_the_wrong_shape_is_refused(case, tiny, tmp_path):
    r = GGUFReader(str(tiny))
    n = len(r.fields["tokenizer.ggml.tokens"].contents())
    kv, key = {
        "types short": ([("tokenizer.ggml.token_type", [1] * (n - 1), V.ARRAY, V.INT32)], "tokenizer.ggml.token_type"),
        "types strings": ([("tokenizer.ggml.token_type", ["1"] * n, V.ARRAY, V.STRING)], "tokenizer.ggml.token_type"),
        "merges ints": ([("tokenizer.ggml.merges", [1, 2], V.ARRAY, V.INT32)], "tokenizer.ggml.merges"),
        "tokens ints": ([("tokenizer.ggml.tokens", list(range(n)), V.ARRAY, V.INT32)], "tokenizer.ggml.tokens"),
        "template int": ([("tokenizer.chat_template", 7, V.UINT32, None)], "tokenizer.chat_template"),
    }[case]
    bad = rewrite(tiny, tmp_path / "bad.gguf", kv=kv)
    _load_refused(bad, key)


def test_bad_files_exit_2_with_one_line_naming_file_and_problem(tiny, tmp_path):
    data = tiny.read_bytes()
    cut = _put(tmp_path, "cut.gguf", data[: len(data) - 100])
    big = write(tmp_path / "be.gguf", [("x", 1, V.UINT32, None)], [("w", np.ones(32, np.float32), None)],
                endianess=GGUFEndian.BIG)
    absurd = _put(tmp_path, "absurd.gguf", ABSURD["u64 array 2^62"])
    for path, fragment in ((cut, "runs past the end"), (big, "big-endian"), (absurd, "truncated")):
        r = subprocess.run([sys.executable, "-m", "local_engine", "generate", "--model", str(path), "hi"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and fragment in lines[0], r.stderr[-2000:]
