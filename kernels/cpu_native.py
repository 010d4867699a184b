"""The native CPU kernels (kernels/csrc/quant_gemv.c): built at first use, called via ctypes.

    lib() -> ctypes.CDLL | None     the loaded library, or None (then the aten paths run)
    isa() -> str | None             the SIMD path compiled in: "avx512", "avx2", "neon" or "scalar"
    gemm / gemm_tiled / dequant / moe / moe_bf16 / head_gemv / rms_norm / mla_step / layers_step
    / gate
                                    thin wrappers over its entry points

The C file is compiled with the system compiler (``$CC``, default ``cc``) as
``-O3 <target> -fPIC -shared -fopenmp``; the target is ``-march=native`` on x86-64 and
``-mcpu=native`` on ARM64 (and other CPUs), or what ``DUET_NATIVE_MARCH`` names
(``haswell``: AVX2; ``x86-64``: plain C; ``native``; a value starting with ``-`` is passed as
the flag itself). The C picks its SIMD path from the target (AVX-512BW, AVX2+FMA, ARM64's NEON
for the integer block products, else plain C), so it builds on any CPU; tests/arm64_emulator.py
runs the ARM64 build on an emulated CPU in the test suite. Where the compiler has no OpenMP
(Apple clang) it is built without and runs on one thread, with one warning. With OpenMP it is linked against the
runtime torch itself loaded, so both share one thread pool (two runtimes on few cores spin
against each other). The .so is cached under ``$DUET_KERNEL_CACHE`` (default: the user cache
dir ``duet/kernels``), named by a hash of source, flags, compiler version, that runtime and
this CPU's flags; it is written to a temp file and renamed, so racing processes are harmless.
Any failure (no compiler, compile error, Windows) logs one warning and returns None.
``DUET_KERNELS=reference`` or ``=aten`` keeps it unloaded. ctypes releases the GIL for the
duration of each call. ``CALLS`` counts calls per entry point (tests check the path ran).

Activations are rounded per block to 16-bit or 8-bit integers inside the quantized matmuls
(the ``act_bits`` argument; kernels.dispatch's plan chooses it: 8 bits for int4 weights as
llama.cpp's Q8_0 activations, _mm256_maddubs_epi16, where the build is not AVX-512; 16 bits for
int8 weights and on AVX-512). Whether these kernels run at all is the plan's choice too
(``dispatch.native()``). ``variant(march)`` swaps in another build for a block (tests run
the AVX2 and plain-C builds on any x86-64 CPU).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch

from kernels import capability

__all__ = ["lib", "build", "build_any", "variant", "swapped", "isa", "flags", "gemm", "gemm_tiled", "dequant", "moe", "moe_many", "moe_bf16", "head_gemv",
           "rms_norm", "mla_step", "layers_step", "gate", "CALLS", "SOURCE"]

log = logging.getLogger(__name__)
SOURCE = Path(__file__).resolve().parent / "csrc" / "quant_gemv.c"
BASE_FLAGS = ("-O3", "-fPIC", "-shared")
_X86 = ("x86_64", "amd64", "i386", "i686")
CALLS: Counter = Counter()

_LIB: ctypes.CDLL | None = None
_TRIED = False
_WARNED_NO_OMP = False
_c_int, _c_long, _ptr = ctypes.c_int, ctypes.c_long, ctypes.c_void_p


def _torch_gomp() -> Path | None:
    """The libgomp torch loaded (its wheel bundles one), else None."""
    lib_dir = Path(torch.__file__).resolve().parent / "lib"
    for cand in sorted(lib_dir.glob("libgomp*.so*")):
        return cand
    return None


def _cache_dir() -> Path:
    env = os.environ.get("DUET_KERNEL_CACHE")
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("duet")) / "kernels"
    except ImportError:
        return Path.home() / ".cache" / "duet" / "kernels"


def _cpu_flags() -> bytes:
    """This CPU's feature flags: -march=native code must not be reused on another CPU (a cache
    dir on a shared home)."""
    found = capability.cpu_flags()
    return " ".join(sorted(found)).encode() if found else platform.processor().encode()


def flags(march: str | None = None) -> list[str]:
    """The compiler flags for a target: ``march`` or ``$DUET_NATIVE_MARCH`` or what the CPU level
    ``DUET_CPU`` forces on x86-64 (avx2: haswell, scalar: x86-64) or "native"."""
    m = (march or os.environ.get("DUET_NATIVE_MARCH") or _forced_march() or "native").strip()
    if m.startswith("-"):
        target = m.split()
    elif platform.machine().lower() in _X86:
        target = [f"-march={m}"]
    else:   # ARM64 and the rest: gcc and clang take -mcpu=native there (-march=native is x86's)
        target = [f"-mcpu={m}"]
    return [*BASE_FLAGS, *target]


def _forced_march() -> str | None:
    if platform.machine().lower() not in _X86:
        return None
    try:
        return {"avx2": "haswell", "scalar": "x86-64"}.get(capability.forced_level())
    except ValueError:
        return None  # a bad DUET_CPU is reported where the engine loads


def build(cache_dir: Path | None = None, cc: str | None = None, march: str | None = None,
          openmp: bool = True, source: Path = SOURCE, headers: tuple[Path, ...] = (),
          extra: tuple[str, ...] = ()) -> tuple[Path, bool]:
    """Compile a kernels/csrc library (``source``; this module's by default) unless the cache has
    it: (path of the .so, whether it compiled now). Raises RuntimeError with the compiler's
    message on failure."""
    cc = cc or os.environ.get("CC") or "cc"
    exe = shutil.which(cc.split()[0]) if cc.split() else None
    if exe is None:
        raise RuntimeError(f"no C compiler ({cc!r} not found)")
    try:
        ver = subprocess.run([*cc.split(), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"{cc} --version failed: {e}") from None
    if ver.returncode != 0:
        raise RuntimeError(f"{cc} --version failed: {(ver.stderr or ver.stdout).strip()[:200]}")
    fl = flags(march) + list(extra) + (["-fopenmp"] if openmp else [])
    gomp = _torch_gomp() if openmp else None
    link = [str(gomp), f"-Wl,-rpath,{gomp.parent}"] if gomp else []
    key = hashlib.sha256()
    for part in (source.read_bytes(), *(h.read_bytes() for h in headers), " ".join(fl).encode(),
                 ver.stdout.encode(), str(gomp).encode(), platform.machine().encode(), _cpu_flags()):
        key.update(part + b"\0")
    out_dir = cache_dir or _cache_dir()
    target = out_dir / f"duet_{source.stem.split('_')[0]}_{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target, False
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        r = subprocess.run([*cc.split(), *fl, str(source), "-o", tmp, *link, "-lm"],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{cc} failed: {(r.stderr or r.stdout).strip()[-400:]}")
        os.replace(tmp, target)       # atomic: a racing process sees the old or the new file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target, True


def build_any(march: str | None = None, **kw) -> Path:
    """``build`` with OpenMP, else (a compiler without it, e.g. Apple clang) without, warning
    once; ``kw`` as ``build`` takes them (another library's source, headers, flags)."""
    global _WARNED_NO_OMP
    try:
        return build(march=march, **kw)[0]
    except RuntimeError as with_omp:
        if "not found" in str(with_omp) or "--version" in str(with_omp):
            raise
        try:
            path = build(march=march, openmp=False, **kw)[0]
        except RuntimeError:
            raise with_omp from None
        if not _WARNED_NO_OMP:
            _WARNED_NO_OMP = True
            log.warning("duet native kernels: built without OpenMP (the compiler has none): one thread each")
        return path


def load(march: str | None = None) -> ctypes.CDLL:
    """Build (or find in the cache) and load the library for a target; raises RuntimeError/OSError."""
    return _bind(ctypes.CDLL(str(build_any(march))))


def _bind(so: ctypes.CDLL) -> ctypes.CDLL:
    so.duet_isa.restype = ctypes.c_char_p
    so.duet_isa.argtypes = []
    so.duet_openmp.restype = _c_int
    so.duet_openmp.argtypes = []
    so.duet_last_team.restype = _c_int
    so.duet_last_team.argtypes = []
    so.duet_gemm.restype = _c_int
    so.duet_gemm.argtypes = [_c_int, _ptr, _c_int, _c_int, _c_int, _c_long, _ptr, _ptr, _c_int, _c_int, _c_int,
                             _ptr, _c_int, _c_long, _c_int, _c_int]
    so.duet_gemm_tiled.restype = _c_int
    so.duet_gemm_tiled.argtypes = so.duet_gemm.argtypes
    so.duet_dequant.restype = None
    so.duet_dequant.argtypes = [_c_int, _ptr, _ptr, _c_int, _c_int, _c_int, _c_int, _ptr, _c_int, _c_int]
    so.duet_head_gemv.restype = None
    so.duet_head_gemv.argtypes = [_ptr, _ptr, _ptr, _c_int, _c_int, _c_int, _c_int]
    so.duet_rms_norm.restype = None
    so.duet_rms_norm.argtypes = [_ptr, _ptr, _ptr, _c_int, _c_int, _c_long, _c_int, ctypes.c_float]
    so.duet_moe_bf16.restype = _c_int
    so.duet_moe_bf16.argtypes = [_ptr, _ptr, _ptr, _ptr, _c_int, _c_int, _ptr, _c_int, _ptr, _c_int]
    so.duet_mla_step.restype = _c_int
    so.duet_mla_step.argtypes = [_ptr, _ptr, _ptr, _ptr, ctypes.c_float, _ptr, _c_int, _ptr, _ptr, _ptr, _ptr, _ptr,
                                 _ptr, _ptr, _ptr, _c_int, _c_int]
    so.duet_mla_attention.restype = _c_int
    so.duet_mla_attention.argtypes = [_ptr, _c_int, _c_int, _c_int, _c_int, _c_int, _ptr, _c_int, _c_int, _c_long,
                                      _c_int, ctypes.c_float, _ptr, _c_int]
    so.duet_layers_step.restype = _c_int
    so.duet_layers_step.argtypes = [_ptr, _c_int, _c_int, _ptr, _ptr, _ptr, _ptr, _c_int, _c_int]
    so.duet_gate.restype = _c_int
    so.duet_gate.argtypes = [_ptr, _ptr, _ptr, _c_int, _c_int, _c_int, _c_int, _c_int, _c_int, _c_int, _c_int,
                             ctypes.c_float, _ptr, _ptr]
    so.duet_moe.restype = _c_int
    so.duet_moe.argtypes = [_c_int, _ptr, _ptr, _ptr, _ptr, _ptr, _c_int, _c_int, _c_int, _ptr, _c_int, _c_int,
                            _c_int, _ptr, _c_int, _c_int, _c_int]
    so.duet_moe_many.restype = _c_int
    so.duet_moe_many.argtypes = [_c_int, _ptr, _ptr, _ptr, _c_int, _ptr, _ptr, _ptr, _ptr, _c_int, _c_int, _ptr,
                                 _c_int, _c_int, _c_int, _c_int, _ptr, _c_int, _c_int, _c_int]
    return so


def try_load(load, what: str, fallback: str) -> ctypes.CDLL | None:
    """``load()``'s library, or None where native code is turned off (``DUET_KERNELS=reference``
    or ``=aten``), not built (Windows) or fails to build or load: then a warning names ``what``
    and the ``fallback`` that runs instead. Each native library's ``lib()`` calls it once."""
    if os.environ.get("DUET_KERNELS") in ("reference", "aten"):
        return None
    if sys.platform.startswith("win"):
        log.warning("%s: not built on Windows; using %s", what, fallback)
        return None
    try:
        return load()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        log.warning("%s unavailable, using %s: %s", what, fallback, str(e).splitlines()[0] if str(e) else e)
        return None


def lib() -> ctypes.CDLL | None:
    """The native library, built and loaded once per process; None where it cannot be."""
    global _TRIED
    if not _TRIED:
        _TRIED = True
        _set(try_load(load, "duet native kernels", "aten"))
    return _LIB


def in_process() -> bool:
    """Whether the loaded library is this process's own machine code (not an emulated build,
    tests/arm64_emulator.py), so that entry points of other native libraries can be handed to
    it by address (kernels/kquant.py's, for the GGUF decode step)."""
    return isinstance(_LIB, ctypes.CDLL)


def _set(so: ctypes.CDLL | None) -> None:
    global _LIB
    _LIB = so


@contextmanager
def variant(march: str, act_bits: int | None = None):
    """Within the block the library built for ``march`` ("haswell", "x86-64", ...) runs every
    native call (the weight layouts are the same for every build) and the plan follows it;
    ``act_bits`` forces the activation precision. Raises RuntimeError where that target does
    not build."""
    lib()
    with swapped(load(march), act_bits) as so:
        yield so


@contextmanager
def swapped(so, act_bits: int | None = None):
    """Within the block ``so`` (a library with this one's entry points, already bound: another
    build, or one run elsewhere, e.g. an emulated CPU's) runs every native call."""
    global _LIB, _TRIED
    from kernels import dispatch

    lib()
    saved = (_LIB, _TRIED)
    _set(so)
    _TRIED = True
    try:
        with dispatch.overridden(act_bits=act_bits):
            yield so
    finally:
        _LIB, _TRIED = saved
        dispatch.replan()


def isa() -> str | None:
    """The SIMD path of the loaded library: "avx512", "avx2", "neon" or "scalar"; None when not loaded."""
    so = lib()
    return so.duet_isa().decode() if so is not None else None


_BF16 = {torch.bfloat16: 1, torch.float32: 0}


def gemm(bits: int, x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, kp: int, gs: int, n: int,
         act_bits: int) -> torch.Tensor:
    """x [M, k] (bf16 or fp32, contiguous) -> y [M, n] in x's dtype; q/s a native weight;
    activations rounded to ``act_bits`` (8 or 16) per block."""
    return _matmul("gemm", bits, x, q, s, kp, gs, n, act_bits)


def gemm_tiled(bits: int, x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, kp: int, gs: int, n: int,
               act_bits: int) -> torch.Tensor:
    """As ``gemm`` for many rows (prefill): the same block integers, computed in register tiles
    over cache-sized parts of x and the weight, threads over the weight's rows."""
    return _matmul("gemm_tiled", bits, x, q, s, kp, gs, n, act_bits)


def _matmul(entry: str, bits, x, q, s, kp, gs, n, act_bits) -> torch.Tensor:
    m, k = x.shape
    y = torch.empty(m, n, dtype=x.dtype)
    CALLS[entry] += 1
    rc = getattr(_LIB, f"duet_{entry}")(bits, x.data_ptr(), _BF16[x.dtype], m, k, k, q.data_ptr(), s.data_ptr(), kp,
                                         gs, n, y.data_ptr(), _BF16[x.dtype], n, torch.get_num_threads(), act_bits)
    if rc:
        raise MemoryError(f"duet_{entry}: out of memory")
    return y


def dequant(bits: int, q: torch.Tensor, s: torch.Tensor, kp: int, gs: int, n: int, k: int,
            dtype: torch.dtype) -> torch.Tensor:
    """The weight a native matrix stands for, [n, k] in dtype (bf16 or fp32)."""
    out = torch.empty(n, k, dtype=dtype)
    CALLS["dequant"] += 1
    _LIB.duet_dequant(bits, q.data_ptr(), s.data_ptr(), kp, gs, n, k, out.data_ptr(), _BF16[dtype],
                      torch.get_num_threads())
    return out


def moe(bits: int, table: torch.Tensor, inter: torch.Tensor, ip: torch.Tensor, idx: torch.Tensor,
        wts: torch.Tensor, shared: int, gs: int, x: torch.Tensor, hidden: int, hp: int, act_bits: int) -> torch.Tensor:
    """One token through its experts (+ the shared one): x [1, hidden] -> [1, hidden].
    table int64 [E, 4] addresses; inter/ip int32 [E]; idx int64 [k]; wts float32 [k]."""
    y = torch.empty(1, hidden, dtype=x.dtype)
    CALLS["moe"] += 1
    rc = _LIB.duet_moe(bits, table.data_ptr(), inter.data_ptr(), ip.data_ptr(), idx.data_ptr(), wts.data_ptr(),
                       idx.numel(), shared, gs, x.data_ptr(), _BF16[x.dtype], hidden, hp, y.data_ptr(),
                       _BF16[x.dtype], torch.get_num_threads(), act_bits)
    if rc:
        raise MemoryError(f"duet_moe failed ({rc})")
    return y


def moe_many(bits: int, table: torch.Tensor, inter: torch.Tensor, ip: torch.Tensor, experts: int,
             tok: torch.Tensor, wt: torch.Tensor, off: torch.Tensor, at: torch.Tensor, gs: int, x: torch.Tensor,
             hp: int, act_bits: int) -> torch.Tensor:
    """Many tokens through the routed experts, one call: x [N, hidden] -> [N, hidden]. The N*k
    slots sorted by expert: tok int64 [N*k] (each slot's token), wt float32 [N*k] (its weight),
    off int64 [experts + 1] (expert e's slots off[e] .. off[e+1]-1), at int64 [N*k] (where token
    t's i-th choice sits: slot t*k + i's place in that order); table/inter/ip as ``moe``'s."""
    n, hidden = x.shape
    y = torch.empty(n, hidden, dtype=x.dtype)
    CALLS["moe_many"] += 1
    rc = _LIB.duet_moe_many(bits, table.data_ptr(), inter.data_ptr(), ip.data_ptr(), experts, tok.data_ptr(),
                            wt.data_ptr(), off.data_ptr(), at.data_ptr(), at.numel() // max(n, 1), gs, x.data_ptr(),
                            _BF16[x.dtype], n, hidden, hp, y.data_ptr(), _BF16[x.dtype], torch.get_num_threads(),
                            act_bits)
    if rc:
        raise MemoryError(f"duet_moe_many failed ({rc})")
    return y


def head_gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-head GEMV: x float32 [H, K], w bf16 [H, K, N] (contiguous) -> y float32 [H, N],
    y[h] = x[h] · w[h] (MLA's absorbed decode: q_nope · W_uk, and the latent · W_uvᵀ)."""
    h, k, n = w.shape
    x = x.contiguous()
    y = torch.empty(h, n, dtype=torch.float32)
    CALLS["head_gemv"] += 1
    _LIB.duet_head_gemv(x.data_ptr(), w.data_ptr(), y.data_ptr(), h, k, n, torch.get_num_threads())
    return y


def moe_bf16(table: torch.Tensor, inter: torch.Tensor, idx: torch.Tensor, wts: torch.Tensor, shared: int,
             x: torch.Tensor, hidden: int) -> torch.Tensor:
    """One token through bf16 SwiGLU experts (+ the shared one): x float32 [hidden] -> float32
    [hidden]. table int64 [E, 2] (w13, w2 addresses); inter int32 [E]; idx int64 [k]; wts float32 [k]."""
    y = torch.empty(hidden, dtype=torch.float32)
    CALLS["moe_bf16"] += 1
    rc = _LIB.duet_moe_bf16(table.data_ptr(), inter.data_ptr(), idx.data_ptr(), wts.data_ptr(), idx.numel(),
                            shared, x.data_ptr(), hidden, y.data_ptr(), torch.get_num_threads())
    if rc:
        raise MemoryError("duet_moe_bf16: out of memory") if rc == 1 else ValueError("duet_moe_bf16: over 64 experts")
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of the last dim, float32 math, one rounding into x's dtype (bf16 or float32, CPU,
    contiguous); weight bf16 or float32."""
    y = torch.empty_like(x)
    CALLS["rms_norm"] += 1
    _LIB.duet_rms_norm(x.data_ptr(), weight.data_ptr(), y.data_ptr(), _BF16[x.dtype], _BF16[weight.dtype],
                       x.numel() // x.shape[-1], x.shape[-1], eps)
    return y


def mla_step(step, x: torch.Tensor, pos: int, cos: torch.Tensor, sin: torch.Tensor, h: torch.Tensor,
             normed: torch.Tensor) -> None:
    """One token at ``pos`` through an MLA block (kernels.decode_step.MLAStep ``step``): fills
    ``h`` and ``normed`` (x's shape and dtype) and the latent cache row ``pos``."""
    CALLS["mla_step"] += 1
    rc = _LIB.duet_mla_step(step.lin.data_ptr(), step.norms.data_ptr(), step.norm_bf16.data_ptr(),
                            step.eps.data_ptr(), step.shape.scale, step.dims.data_ptr(), pos, cos.data_ptr(),
                            sin.data_ptr(), step.cache.data_ptr(), step.uk, step.uv_t, x.data_ptr(), h.data_ptr(),
                            normed.data_ptr(), _BF16[x.dtype], torch.get_num_threads())
    if rc:
        raise MemoryError("duet_mla_step: out of memory")


def mla_attention(q: torch.Tensor, cache: torch.Tensor, kv_lora: int, scale: float, start_pos: int) -> torch.Tensor:
    """Absorbed MLA attention over the latent cache (kernels.mla's op): q [B, T, H, kv_lora + rope]
    (any float dtype), cache [B, S, kv_lora + rope] float32 or bf16 with unit last-dim stride (rows
    past start_pos + T are not read) -> float32 [B, T, H, kv_lora]. Each query is computed as the
    native decode step computes one token at its position."""
    B, T, H, D = q.shape
    qf = q.to(torch.float32).contiguous()
    out = torch.empty(B, T, H, kv_lora, dtype=torch.float32)
    CALLS["mla_attention"] += 1
    rc = _LIB.duet_mla_attention(qf.data_ptr(), B, T, H, kv_lora, D - kv_lora, cache.data_ptr(), _BF16[cache.dtype],
                                 cache.stride(1), cache.stride(0), start_pos, scale, out.data_ptr(),
                                 torch.get_num_threads())
    if rc:
        raise MemoryError("duet_mla_attention: out of memory")
    return out


def layers_step(rows: torch.Tensor, x: torch.Tensor, pos: int, cos: torch.Tensor, sin: torch.Tensor,
                out: torch.Tensor) -> None:
    """One token at ``pos`` through consecutive whole decode layers, one call: ``rows`` int64
    [layers, 10], each layer's line (kernels.decode_step.LayerStep.row: its MLA block's
    descriptors, then its FFN's); fills ``out`` (x's shape and dtype) and each layer's latent
    cache row ``pos``. CALLS["layer_step"] counts the layers stepped."""
    CALLS["layer_step"] += rows.shape[0]
    rc = _LIB.duet_layers_step(rows.data_ptr(), rows.shape[0], pos, cos.data_ptr(), sin.data_ptr(), x.data_ptr(),
                               out.data_ptr(), _BF16[x.dtype], torch.get_num_threads())
    if rc:
        raise MemoryError("duet_layers_step: out of memory") if rc == 1 else ValueError(f"duet_layers_step failed ({rc})")


def gate(p, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token's MoE routing (kernels.decode_step.GatePlan ``p``): x float32 [hidden] ->
    (weights float32 [1, k], indices int64 [1, k])."""
    idx = torch.empty(1, p.topk, dtype=torch.int64)
    wts = torch.empty(1, p.topk, dtype=torch.float32)
    CALLS["gate"] += 1
    rc = _LIB.duet_gate(x.data_ptr(), p.weight.data_ptr(), p.bias.data_ptr() if p.bias is not None else None,
                        p.weight.shape[0], p.weight.shape[1], int(p.sigmoid), p.n_group, p.topk_group, p.method,
                        p.topk, int(p.norm), p.route_scale, idx.data_ptr(), wts.data_ptr())
    if rc:
        raise ValueError(f"duet_gate: {p.weight.shape[0]} experts, top {p.topk}: out of the kernel's range")
    return wts, idx
