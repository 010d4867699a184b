"""kernels/csrc built for ARM64 and run in an emulated ARM64 CPU, so the ARM build (its NEON
paths included) is tested on an x86-64 machine.

    with native(act_bits=8):      # kernels/cpu_native's library is the ARM64 build in the block
        ...
    with gguf():                  # kernels/kquant's too

``cross_build`` compiles a kernel source with zig's clang for aarch64-linux-musl, static, plus
``data/arm64_shim.c`` (malloc from an arena, no threads, no OpenMP)
linked with musl's libm and string functions, at an address far from this process's memory.
``EmulatedLibrary`` calls a function of it on unicorn's ARM64 CPU (the "max" model: ARMv8.x
with dot products) by the AAPCS64 convention: integer and pointer arguments in x0-x7 then on
the stack, floats in s0-s7. Pointer arguments are this process's addresses, unchanged: the
first time the ARM code touches a page of this process's memory (a tensor's), that page is
mapped into the emulator at the same address (``mem_map_ptr``: the same bytes, no copy), and
every such page is unmapped again when the call returns. A page this process has not mapped
stays unmapped, so a stray access is an emulator error, not a crash.
"""

from __future__ import annotations

import ctypes
import hashlib
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from kernels import cpu_native, kquant

HERE = Path(__file__).resolve().parent
SHIM = HERE / "data" / "arm64_shim.c"
BASE = 0x4000_0000            # where the image is linked (within ADRP's reach of address 0)
STACK, STACK_SIZE = 0x5000_0000, 1 << 20
TLS = 0x5100_0000             # a thread pointer for the C library (errno)
TRAP = 0x5200_0000            # the return address: the call is done when the CPU gets here
PAGE = 0x1000
MASK = (1 << 64) - 1


def available() -> str | None:
    """None when the cross compiler and the emulator are installed, else what is missing."""
    missing = []
    for mod in ("ziglang", "unicorn"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    return f"needs {' and '.join(missing)} (pip install -e '.[dev]')" if missing else None


def cross_build(source: Path, headers: tuple[Path, ...] = (), flags: tuple[str, ...] = (),
                cpu: str = "generic+dotprod", cache: Path | None = None) -> Path:
    """``source`` + shim.c as a static aarch64 image (cached by content and flags)."""
    cmd = [sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-linux-musl", f"-mcpu={cpu}", "-O3",
           "-static", "-fno-stack-protector", f"-Wl,--image-base={BASE:#x}", "-Wl,--no-gc-sections", *flags]
    key = hashlib.sha256(" ".join(cmd).encode())
    for part in (source, *headers, SHIM):
        key.update(part.read_bytes())
    out_dir = cache or HERE.parent / "build" / "arm64"
    out_dir.mkdir(parents=True, exist_ok=True)
    image = out_dir / f"{source.stem}-{key.hexdigest()[:16]}.elf"
    if not image.is_file():
        tmp = image.with_suffix(".tmp")
        r = subprocess.run([*cmd, str(source), str(SHIM), "-o", str(tmp), "-lm"], capture_output=True, text=True,
                           timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"zig cc (aarch64) failed: {(r.stderr or r.stdout).strip()[-2000:]}")
        tmp.replace(image)
    return image


def _read_elf(data: bytes):
    """(PT_LOAD segments as (vaddr, bytes, memsz), {symbol: address}) of a little-endian ELF64."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    segments = []
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz, memsz = struct.unpack_from("<IIQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            segments.append((vaddr, data[off:off + filesz], memsz))
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    symbols = {}
    for _name, sh_type, _f, _a, off, size, link, _info, _al, entsize in sections:
        if sh_type != 2:   # SHT_SYMTAB
            continue
        str_off = sections[link][4]
        for j in range(size // entsize):
            st_name, _info2, _other, shndx, value, _size = struct.unpack_from("<IBBHQQ", data, off + j * entsize)
            if shndx and value:
                end = data.index(b"\0", str_off + st_name)
                symbols[data[str_off + st_name:end].decode()] = value
    return segments, symbols


def _host_ranges() -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = line.split()[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


class EmulatedLibrary:
    """The functions of an aarch64 image, called like a ctypes library's (set ``argtypes`` and
    ``restype`` on them first, as for ctypes)."""

    def __init__(self, image: Path):
        from unicorn import UC_ARCH_ARM64, UC_HOOK_MEM_UNMAPPED, UC_MODE_ARM, Uc
        from unicorn import arm64_const as A

        self._A = A
        uc = self.uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.ctl_set_cpu_model(A.UC_CPU_ARM64_MAX)
        segments, self.symbols = _read_elf(Path(image).read_bytes())
        lo = min(v for v, _, _ in segments) & ~(PAGE - 1)
        hi = (max(v + m for v, _, m in segments) + PAGE - 1) & ~(PAGE - 1)
        uc.mem_map(lo, hi - lo)
        for vaddr, blob, _ in segments:
            uc.mem_write(vaddr, blob)
        self._own = [(lo, hi), (STACK, STACK + STACK_SIZE), (TLS, TLS + PAGE), (TRAP, TRAP + PAGE)]
        uc.mem_map(STACK, STACK_SIZE)
        uc.mem_map(TLS, PAGE)
        uc.mem_map(TRAP, PAGE)
        uc.reg_write(A.UC_ARM64_REG_CPACR_EL1, 3 << 20)   # FP/SIMD on at EL0
        uc.reg_write(A.UC_ARM64_REG_TPIDR_EL0, TLS)
        self._mapped: list[int] = []
        self._host: list[tuple[int, int]] = []
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        self._funcs: dict[str, _Function] = {}

    def __getattr__(self, name: str) -> "_Function":
        if name.startswith("_") or name not in self.symbols:
            raise AttributeError(name)
        return self._funcs.setdefault(name, _Function(self, name))

    def _on_unmapped(self, uc, access, address, size, value, data) -> bool:
        from unicorn import UC_PROT_ALL

        page = address & ~(PAGE - 1)
        if any(lo <= page < hi for lo, hi in self._own):
            return False
        if not any(lo <= page < hi for lo, hi in self._host):
            self._host = _host_ranges()
            if not any(lo <= page < hi for lo, hi in self._host):
                return False   # not this process's memory either: a stray access
        uc.mem_map_ptr(page, PAGE, UC_PROT_ALL, page)
        self._mapped.append(page)
        return True

    def read_cstring(self, address: int) -> bytes:
        out = b""
        while b"\0" not in out:
            out += bytes(self.uc.mem_read(address + len(out), 64))
        return out[:out.index(b"\0")]

    def call(self, name: str, args, argtypes, restype):
        A, uc = self._A, self.uc
        ints, floats, stacked = [], [], []
        for a, t in zip(args, argtypes or [None] * len(args)):
            v = a.value if isinstance(a, ctypes._SimpleCData) else a
            if t in (ctypes.c_float, ctypes.c_double) or isinstance(v, float):
                floats.append(struct.unpack("<I", struct.pack("<f", float(v)))[0])
            elif len(ints) < 8:
                ints.append(int(v or 0) & MASK)
            else:
                stacked.append(int(v or 0) & MASK)
        if len(floats) > 8:
            raise NotImplementedError("more than 8 float arguments")
        for i, v in enumerate(ints):
            uc.reg_write(A.UC_ARM64_REG_X0 + i, v)
        for i, v in enumerate(floats):
            uc.reg_write(A.UC_ARM64_REG_S0 + i, v)
        sp = (STACK + STACK_SIZE - 8 * len(stacked) - 256) & ~15
        for i, v in enumerate(stacked):
            uc.mem_write(sp + 8 * i, struct.pack("<Q", v))
        uc.reg_write(A.UC_ARM64_REG_SP, sp)
        uc.reg_write(A.UC_ARM64_REG_LR, TRAP)
        uc.mem_write(self.symbols["duet_emu_used"], b"\0" * 8)   # an empty arena for each call
        try:
            uc.emu_start(self.symbols[name], TRAP)
        finally:
            for page in self._mapped:
                uc.mem_unmap(page, PAGE)
            self._mapped.clear()
        if restype is None:
            return None
        if restype in (ctypes.c_float, ctypes.c_double):
            return struct.unpack("<f", struct.pack("<I", uc.reg_read(A.UC_ARM64_REG_S0) & 0xffffffff))[0]
        x0 = uc.reg_read(A.UC_ARM64_REG_X0)
        if restype is ctypes.c_char_p:
            return self.read_cstring(x0) if x0 else None
        if restype is ctypes.c_int:
            x0 &= 0xffffffff
            return x0 - (1 << 32) if x0 >> 31 else x0
        return x0


class _Function:
    def __init__(self, lib: EmulatedLibrary, name: str):
        self.lib, self.name = lib, name
        self.argtypes: list | None = None
        self.restype = ctypes.c_int

    def __call__(self, *args):
        return self.lib.call(self.name, args, self.argtypes, self.restype)


_LIBS: dict[str, object] = {}


DOTPROD, NO_DOTPROD = "generic+dotprod", "generic"   # ARMv8.2's sdot (most ARM64 CPUs now), plain ARMv8-A


def library(which: str, cpu: str = DOTPROD):
    """The emulated ARM64 build (for ``cpu``) of kernels/csrc's ``quant`` (cpu_native) or
    ``kquant`` library, bound as the real one is; built once per process. Skips the test where
    zig or unicorn is missing."""
    if (which, cpu) not in _LIBS:
        reason = available()
        if reason:
            pytest.skip(f"the ARM64 build {reason}")
        if which == "quant":
            so = cpu_native._bind(EmulatedLibrary(cross_build(cpu_native.SOURCE, cpu=cpu)))
        else:
            so = kquant._bind(EmulatedLibrary(cross_build(kquant.SOURCE, kquant.HEADERS, kquant.EXTRA_FLAGS, cpu=cpu)))
        _LIBS[which, cpu] = so
    return _LIBS[which, cpu]


@contextmanager
def native(act_bits: int | None = None, cpu: str = DOTPROD):
    """Within the block kernels.cpu_native runs the ARM64 build, emulated."""
    with cpu_native.swapped(library("quant", cpu), act_bits) as so:
        yield so


@contextmanager
def gguf(cpu: str = DOTPROD):
    """Within the block kernels.kquant runs the ARM64 build, emulated."""
    with kquant.swapped(library("kquant", cpu)) as so:
        yield so
