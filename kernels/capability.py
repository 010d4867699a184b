"""What this CPU and this torch build can do, detected once; the engine's CPU fast paths are
planned from it once (kernels.dispatch.plan), and ``duet doctor`` and the benches print it.

    detect() -> Capability     cached for the process
    report() -> list[(path, on/off, why)]   the rows doctor and the benches show

``DUET_CPU`` forces a lower capability level than the CPU has, so any machine can run the
paths a weaker CPU gets: ``avx2`` (what an AVX2-only x86 CPU gets: no oneDNN bf16 packing) or
``scalar`` (no SIMD assumptions at all). It only ever lowers the level. To make torch's own
kernels behave as on such a CPU too, start the process with ``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2`` (read by torch at import, so they cannot be set from here).

bf16 counts as native only where the CPU multiplies bf16 itself (AVX512_BF16 or AMX):
AVX-512 CPUs without (Skylake-SP, Cascade Lake, Ice Lake) get float32 activations and no bf16
packing, as AVX2 CPUs do, because oneDNN emulates bf16 there, 4x slower than float32 (measured
with ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI``, which makes an AMX machine behave as one of
those: 36 against 157 GMAC/s on a 512x2048x2816 matmul).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import cache

import torch

# kernels/csrc's builds (its duet_isa()) as people name them
ISA_NAMES = {"avx512": "AVX-512", "avx2": "AVX2+FMA", "neon": "ARM64 NEON", "scalar": "plain C",
             # kernels/kquant's builds name their integer dot product too
             "avx512-vnni": "AVX-512 VNNI", "avx-vnni": "AVX-VNNI", "neon-dotprod": "ARM64 NEON sdot"}
LEVELS = ("scalar", "avx2", "avx512")   # lowest first; ARM64 reports "neon" (no forcing above it)
PACK_NEEDS = "needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT"
BF16_DOT_FLAGS = ("avx512_bf16", "amx_bf16")   # x86 CPU flags of native bf16 dot products
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still allow those
ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
                    "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
                    "ALL", "DEFAULT")


@dataclass(frozen=True)
class Capability:
    machine: str          # platform.machine(): x86_64, aarch64, arm64, ...
    torch_isa: str        # torch's kernel level: AVX512, AVX2, DEFAULT, ...
    forced: str | None    # DUET_CPU when set
    bf16_packing: bool    # oneDNN pre-packed bf16 linears (CPU bf16 models)
    bf16_packing_why: str
    bf16_native: bool     # bf16 matmuls run natively (AVX512_BF16/AMX and oneDNN bf16); elsewhere they
    #                       are emulated, slower than float32: activations then run in float32

    @property
    def level(self) -> str:
        """The level the engine plans for: what the CPU has, lowered by DUET_CPU."""
        if self.forced:
            return self.forced
        isa = self.torch_isa.upper()
        if "AVX512" in isa:
            return "avx512"
        if "AVX2" in isa:
            return "avx2"
        return "neon" if _is_arm(self.machine) else "scalar"


def forced_level() -> str | None:
    """DUET_CPU's level, or None. A value we do not know is an error naming the variable."""
    value = os.environ.get("DUET_CPU", "").strip().lower()
    if value in ("", "auto", "native"):
        return None
    if value not in LEVELS:
        raise ValueError(f"DUET_CPU={value!r}: expected one of {', '.join(LEVELS)} (or auto)")
    return value


@cache
def detect() -> Capability:
    forced = forced_level()
    machine = platform.machine()
    torch_isa = torch.backends.cpu.get_cpu_capability()
    packing, why = _bf16_packing(forced)
    return Capability(machine=machine, torch_isa=torch_isa, forced=forced, bf16_packing=packing,
                      bf16_packing_why=why, bf16_native=_bf16_native(forced, torch_isa))


def _is_arm(machine: str) -> bool:
    return machine.lower() in ("aarch64", "arm64", "armv8l")


def bf16_dot() -> tuple[bool | None, str]:
    """Whether this CPU has native bf16 dot products (AVX512_BF16 or AMX) that oneDNN may use
    (``ONEDNN_MAX_CPU_ISA`` not below them), and why not; None where its flags are unknown
    (no /proc/cpuinfo: then oneDNN's own answer stands)."""
    if _is_arm(platform.machine()):
        return None, "not x86"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap and cap not in ONEDNN_BF16_ISAS:
        return False, f"ONEDNN_MAX_CPU_ISA={cap}"
    flags = cpu_flags()
    if flags is None:
        return None, "CPU flags unknown"
    if not flags & set(BF16_DOT_FLAGS):
        return False, "no AVX512_BF16 or AMX: oneDNN would emulate bf16, slower than float32"
    return True, "AVX512_BF16 or AMX"


def cpu_flags() -> set[str] | None:
    """This CPU's feature flags (/proc/cpuinfo: x86's "flags", ARM's "Features"), or None where
    they cannot be read. The one reader: the native kernels' build cache keys on them too."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def _bf16_packing(forced: str | None) -> tuple[bool, str]:
    """oneDNN's bf16 weight packing, tried once on a tiny weight: it refuses CPUs without
    AVX-512 or AVX-NE-CONVERT (and ONEDNN_MAX_CPU_ISA below them) with a RuntimeError. On
    AVX-512 it needs native bf16 dot products too (``bf16_dot``): without them the packed
    matmul is emulated and slower than float32."""
    if forced in ("scalar", "avx2"):
        return False, f"off (DUET_CPU={forced}; {PACK_NEEDS})"
    if "AVX512" in torch.backends.cpu.get_cpu_capability().upper():
        dot, why = bf16_dot()
        if dot is False:
            return False, f"off ({why})"
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False, "off (this torch build has no oneDNN)"
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if supported is not None and not supported():
        return False, f"off ({PACK_NEEDS})"
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(16, 16, dtype=torch.bfloat16), 1)
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 16, dtype=torch.bfloat16), w, None, "none", [], "")
    except RuntimeError as e:
        return False, f"off (oneDNN refused: {str(e).splitlines()[0][:120]})"
    if float(y[0, 0]) != 16.0:
        return False, "off (oneDNN's packed matmul gave a wrong result)"
    return True, "on"


def _bf16_native(forced: str | None, torch_isa: str) -> bool:
    """torch's CPU capability AVX-512 (or AMX), native bf16 dot products (``bf16_dot``) and
    oneDNN's bf16 support: honours ATEN_CPU_CAPABILITY (AVX2 emulated on an AVX-512 machine),
    ONEDNN_MAX_CPU_ISA and DUET_CPU."""
    if forced in ("scalar", "avx2") or torch_isa.upper() not in ("AVX512", "AMX") or bf16_dot()[0] is False:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def report() -> list[tuple[str, str]]:
    """(path, state and why) rows for doctor and the benches: which engine paths this CPU gets."""
    cap = detect()
    forced = f", forced by DUET_CPU={cap.forced}" if cap.forced else ""
    if cap.bf16_native:
        matmuls = "native (AVX512_BF16 or AMX): prompts run in bf16"
    else:
        dot, why = bf16_dot()
        matmuls = f"emulated ({why if dot is False else 'torch kernels ' + cap.torch_isa}): prompts run in float32"
    rows = [("cpu", f"{cap.machine}, torch kernels {cap.torch_isa}, engine plans for {cap.level}{forced}"),
            ("bf16 packing", cap.bf16_packing_why), ("bf16 matmuls", matmuls)]
    from kernels import dispatch

    native_isa = dispatch.plan().native_isa
    if os.environ.get("DUET_KERNELS") in ("reference", "aten"):
        rows.append(("native kernels", f"off (DUET_KERNELS={os.environ['DUET_KERNELS']})"))
    elif native_isa is None:
        rows.append(("native kernels", "off (they did not build here: see the warning above; PyTorch's run)"))
    else:
        isa = ISA_NAMES.get(native_isa, native_isa)
        rows.append(("native kernels", f"on ({isa} build)"))
    return rows


if __name__ == "__main__":  # `python -m kernels.capability`: the rows as JSON (duet doctor runs this)
    import json

    print(json.dumps(report()))
