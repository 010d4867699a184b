"""Which kernel runs where: the CPU's capabilities and the switches, read once, as a plan.

    plan() -> Plan          built at first use, then kept (rebuilt only when the CPU detection
                            is redone, a library is swapped, or ``overridden`` changes a switch)
    native() -> bool        whether kernels/csrc's CPU kernels run (the one such test)
    describe() -> rows      (op, chosen implementation) for the benches and doctor

Each op's module (kernels/quant.py for linear, moe.py, mla.py, norm_rope.py, fp8.py,
indexer.py, kquant.py for the GGUF types, decode_step.py for a one-token step fused across
them) holds its reference, its implementations and the few lines that pick one from this plan;
nothing else chooses.

Switches, read when the plan is built:
    DUET_KERNELS=reference   every op runs its plain PyTorch reference; no native library
    DUET_KERNELS=aten        no native library (PyTorch's own kernels)
    DUET_TRITON=0            CUDA tensors run the PyTorch paths instead of Triton
    DUET_CPU=avx2|scalar     plan for a weaker CPU than this one (kernels.capability)
    DUET_ACT_BITS=8|16       activation precision of the native int8/int4 matmuls
    DUET_GGUF_ACT_BITS=8|16|32   activation precision of the GGUF matmuls (default 16)
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from kernels import capability

GGUF_ACT_ENV = "DUET_GGUF_ACT_BITS"
NATIVE_ACT_ENV = "DUET_ACT_BITS"


TILED_MIN_K = 1024         # the tiled integer GEMM, int4 x 8-bit: from this many inputs (fewer: per-tile costs) ...
TILED_PARAMS = 1 << 20     # ... or a weight this large (its float32 copy would leave the cache)
TILED_ROWS = 64            # otherwise at most this many rows of such a weight


@dataclass(frozen=True)
class LinearPlan:
    """y = x Wᵀ. ``quantized``: "native" (kernels/csrc's GEMV for up to ``native_rows`` rows;
    more rows run its tiled integer GEMM where ``tiled_for`` says so, else dequantize once and
    run one matmul in ``prefill_dtype``) or "aten-int4pack" (PyTorch's packed int4 kernel, bf16
    activations). ``dense``: "onednn-packed" (bf16 weights pre-packed at load) or "torch"
    (F.linear). The native matmuls round activations per block to ``int8_act_bits`` /
    ``int4_act_bits`` (8 or 16) bits."""

    quantized: str
    dense: str
    int8_act_bits: int
    int4_act_bits: int
    prefill_dtype: torch.dtype
    native_rows: int = 4
    tiled: bool = False   # a SIMD build without native bf16 matmuls: the tiled GEMM may run

    def act_bits(self, weight_bits: int) -> int:
        return self.int8_act_bits if weight_bits == 8 else self.int4_act_bits

    def tiled_for(self, weight_bits: int, rows: int, n: int, k: int) -> bool:
        """Whether ``rows`` (> native_rows) rows times a native [n, k] weight run the tiled integer
        GEMM rather than dequantize + float32 matmul. Measured on AVX2 (2 threads, quiet machine):
        int4 weights with 8-bit activations 100-107 GMAC/s on 2816x2048 .. 3072x1536 and 8192x512
        (dequantize + MKL's float32 GEMM 55-86: 2x at an expert's ~48 rows), 0.9x on 512x512 at 48
        rows, 0.7x at k = 192; the 16-bit products (int8 weights' default) ~0.7x of MKL, so only at
        few rows of a weight whose float32 copy would leave the cache."""
        if not self.tiled:
            return False
        if weight_bits == 4 and self.int4_act_bits == 8:
            return k >= TILED_MIN_K or n * k >= TILED_PARAMS
        return rows <= TILED_ROWS and n * k >= TILED_PARAMS


ATTENTION = {"native-bf16": "native over a bf16 latent cache (float32 sums), torch over a float32 one",
             "torch": "torch", "reference": "reference"}
MOE_COMBINE = {"native-grouped": "one native call per layer for quantized experts (tiled), else grouped",
               "grouped": "grouped", "reference": "reference"}


@dataclass(frozen=True)
class MoEPlan:
    """SwiGLU experts. ``decode``: "native-fused" (one kernels/csrc call per layer for up to
    ``fused_rows`` tokens: every active expert, the weighted sum and the shared expert) or
    "grouped"; ``combine`` (more tokens): "native-grouped" (natively quantized experts: one
    kernels/csrc call per layer for every routed expert, on the tiled integer matmul; the shared
    expert as its own MLP), "grouped" (tokens sorted by expert, one call per active expert) or
    "reference" (token by token)."""

    decode: str
    combine: str
    fused_rows: int = 5


@dataclass(frozen=True)
class AttentionPlan:
    """Absorbed MLA. ``attention`` over the latent cache: "native-bf16" (a bf16 cache runs
    kernels/csrc's attention, float32 sums: where the CPU has no native bf16 matmul, torch's bf16
    batched matmul is 8-15x slower; other caches run torch), "torch" or "reference"; ``head_gemv``
    (one token's per-head q·W_uk and latent·W_uvᵀ): "native-bf16" (kernels/csrc reads the bf16
    matrices at bandwidth) or "bmm" (over float32 copies: CPU batched matmuls of these shapes run
    faster in float32 than in bf16)."""

    attention: str
    head_gemv: str
    step: str = "ops"   # a one-token decode step: "native" (kernels.decode_step: the whole layer in
    #                     one call, or its attention block and router one call each) or "ops" (PyTorch)


@dataclass(frozen=True)
class NormPlan:
    """RMSNorm and RoPE. ``norm``: "torch" or "reference"; up to ``native_rows`` rows (a decode
    step) run kernels/csrc's loop where it is built (0: never). ``rope``: "torch" or "reference"."""

    norm: str
    rope: str
    native_rows: int


@dataclass(frozen=True)
class GGUFPlan:
    """GGUF k-quant weights read in place. ``impl``: "native" (kernels/csrc/kquant.c: integer
    block dot products for up to ``native_rows`` rows, tiles of dequantized rows beyond) or
    "torch" (dequantize, then F.linear); activations rounded to ``act_bits`` (8, 16; 32 = float).
    ``prefill_dtype``: the tiles' and their matmuls' dtype for bf16 activations beyond
    ``native_rows`` (bf16 where the CPU multiplies bf16 natively, float32 otherwise or at 32 bits)."""

    impl: str
    isa: str | None
    act_bits: int
    native_rows: int = 8
    prefill_dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class Plan:
    capability: capability.Capability
    reference: bool                # DUET_KERNELS=reference
    native_isa: str | None         # kernels/csrc's build ("avx512", "avx2", "neon", "scalar"); None: not used
    triton: bool                   # CUDA tensors run kernels/triton_ops
    act_dtype: torch.dtype         # the float type CPU matmuls over activations run in
    linear: LinearPlan
    moe: MoEPlan
    attention: AttentionPlan
    norm: NormPlan
    gguf: GGUFPlan

    @property
    def native(self) -> bool:
        return self.native_isa is not None

    def fused_bf16_mlp(self, dtype, device) -> bool:
        """Whether one-token MLP/MoE of a dense model runs kernels/csrc's fused call: bf16 on CPU.
        Its MLP weights then stay dense (the call reads them) rather than packed for oneDNN."""
        return self.native and torch.device(device).type == "cpu" and dtype == torch.bfloat16

    def describe(self) -> list[tuple[str, str]]:
        """(op, implementation) rows: what each op runs on this CPU (and on CUDA tensors)."""
        cap, lin, gg = self.capability, self.linear, self.gguf
        forced = f" (DUET_CPU={cap.forced})" if cap.forced else ""
        isa = capability.ISA_NAMES.get(self.native_isa, self.native_isa)
        gguf_isa = capability.ISA_NAMES.get(gg.isa, gg.isa)
        act = "bfloat16" if self.act_dtype == torch.bfloat16 else "float32 (no native bf16 matmul)"
        if lin.quantized == "native":
            many = f"dequantize + {_name(lin.prefill_dtype)} matmul"
            if lin.tiled:
                tiled = (f"int4 from {TILED_MIN_K} inputs or {TILED_PARAMS >> 20}M values"
                         if lin.int4_act_bits == 8 else "")
                few = f"<= {TILED_ROWS} rows of >= {TILED_PARAMS >> 20}M-value weights"
                many = (f"tiled integer GEMM ({tiled + ', ' if tiled else ''}{'int8' if tiled else 'both'} at "
                        f"{few}), else {many}")
            quant = (f"native {isa} GEMV, <= {lin.native_rows} rows (activations int8 weights {lin.int8_act_bits}-bit, "
                     f"int4 {lin.int4_act_bits}-bit); more rows: {many}")
        else:
            quant = "aten packed int4 kernel (bf16 activations)"
        rows = [("cpu level", f"{cap.level}{forced}; torch kernels {cap.torch_isa}"),
                ("activations", act),
                ("linear (quantized)", quant),
                ("linear (dense)", "oneDNN pre-packed bf16" if lin.dense == "onednn-packed" else "F.linear"),
                ("moe", f"decode: {'one native call per layer' if self.moe.decode == 'native-fused' else 'grouped experts'}"
                        f"; prefill: {MOE_COMBINE[self.moe.combine]}"),
                ("mla attention", f"{ATTENTION[self.attention.attention]}; one-token head products: "
                                  f"{'native bf16 GEMV' if self.attention.head_gemv == 'native-bf16' else 'float32 bmm'}"
                                  "; long prefill chunks: keys expanded per head, SDPA"),
                ("decode step", "one native call per layer (attention, norms, router, experts, residuals; "
                                "attention alone where the experts are not native int8/int4 or bf16)"
                                if self.attention.step == "native" else "PyTorch ops"),
                ("rms norm", self.norm.norm + (f" (native for <= {self.norm.native_rows} rows)"
                                               if self.norm.native_rows else "")),
                ("rope", self.norm.rope),
                ("gguf", f"native {gguf_isa} block dots, {gg.act_bits}-bit activations; prefill: "
                         f"{_name(gg.prefill_dtype)} tiles" if gg.impl == "native"
                         else f"torch dequantize + matmul ({gg.act_bits}-bit activations)"),
                ("cuda", "Triton kernels" if self.triton else "PyTorch")]
        return rows


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_PLAN: Plan | None = None
_OVERRIDES: dict = {}


def plan() -> Plan:
    """The plan, built once (and again only after ``replan`` or a new capability detection)."""
    p = _PLAN
    if p is None or p.capability is not capability.detect():
        p = replan()
    return p


def native() -> bool:
    """Whether kernels/csrc's CPU kernels run: built, loaded and not switched off."""
    return plan().native


def describe() -> list[tuple[str, str]]:
    return plan().describe()


def replan() -> Plan:
    """Read the capabilities and the switches again (after a test swaps a library or a switch)."""
    global _PLAN
    _PLAN = _build(capability.detect(), _OVERRIDES)
    return _PLAN


@contextmanager
def overridden(**switches):
    """Within the block the plan is built with these switches changed (tests and benches):
    ``native=False`` (kernels/csrc off: weights made inside take the aten layout),
    ``act_bits=8|16`` (the native matmuls' activations), ``gguf_act_bits=8|16|32``,
    ``gguf_prefill=torch.float32|torch.bfloat16`` (GGUF prefill tiles for bf16 activations),
    ``native_attention=True|False`` (bf16 latent caches through kernels/csrc's attention or torch's)."""
    unknown = set(switches) - {"native", "act_bits", "gguf_act_bits", "gguf_prefill", "native_attention"}
    if unknown:
        raise TypeError(f"unknown switch {sorted(unknown)}")
    for name, allowed in (("act_bits", (8, 16)), ("gguf_act_bits", (8, 16, 32))):
        if switches.get(name) is not None and switches[name] not in allowed:
            raise ValueError(f"{name}={switches[name]!r}: expected one of {allowed}")
    if switches.get("gguf_prefill") not in (None, torch.float32, torch.bfloat16):
        raise ValueError(f"gguf_prefill={switches['gguf_prefill']!r}: expected torch.float32 or torch.bfloat16")
    saved = dict(_OVERRIDES)
    _OVERRIDES.update({k: v for k, v in switches.items() if v is not None})
    replan()
    try:
        yield plan()
    finally:
        _OVERRIDES.clear()
        _OVERRIDES.update(saved)
        replan()


def _env_bits(name: str, allowed: tuple[str, ...], default: str) -> int:
    value = os.environ.get(name, "").strip() or default
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: expected {', '.join(allowed[:-1])} or {allowed[-1]}")
    return int(value)


def _build(cap: capability.Capability, over: dict) -> Plan:
    from kernels import cpu_native, kquant, triton_ops

    kernels_env = os.environ.get("DUET_KERNELS", "")
    reference = kernels_env == "reference"
    so = cpu_native.lib() if over.get("native", True) else None
    isa = so.duet_isa().decode() if so is not None else None
    forced = os.environ.get(NATIVE_ACT_ENV)
    if "act_bits" in over:
        int8_bits = int4_bits = over["act_bits"]
    elif forced in ("8", "16"):
        int8_bits = int4_bits = int(forced)
    else:   # int8 weights keep 16-bit activations: 8-bit ones would double their rounding error;
        # on AVX-512 the 16-bit products already stream at memory bandwidth
        int8_bits, int4_bits = 16, (16 if isa == "avx512" else 8)
    act_dtype = torch.bfloat16 if cap.bf16_native else torch.float32
    linear = LinearPlan(quantized="native" if isa else "aten-int4pack",
                        dense="onednn-packed" if cap.bf16_packing and not reference else "torch",
                        int8_act_bits=int8_bits, int4_act_bits=int4_bits, prefill_dtype=act_dtype,
                        tiled=isa in ("avx2", "avx512") and act_dtype == torch.float32 and not reference)
    moe = MoEPlan(decode="native-fused" if isa else "grouped",
                  combine="reference" if reference else "native-grouped" if linear.tiled else "grouped")
    native_attention = over.get("native_attention", not cap.bf16_native)
    attention = AttentionPlan(attention="reference" if reference else
                              "native-bf16" if isa and native_attention else "torch",
                              head_gemv="native-bf16" if isa and not reference else "bmm",
                              step="native" if isa and not reference else "ops")
    norm = NormPlan(norm="reference" if reference else "torch", rope="reference" if reference else "torch",
                    native_rows=8 if isa and not reference else 0)
    gguf_bits = over.get("gguf_act_bits") or _env_bits(GGUF_ACT_ENV, ("8", "16", "32"), "16")
    gso = kquant.lib()
    gguf_prefill = over.get("gguf_prefill") or (act_dtype if gguf_bits != 32 else torch.float32)
    gguf = GGUFPlan(impl="native" if gso is not None else "torch",
                    isa=gso.kq_isa().decode() if gso is not None else None, act_bits=gguf_bits,
                    prefill_dtype=gguf_prefill)
    triton = not reference and os.environ.get("DUET_TRITON") != "0" and triton_ops.installed()
    return Plan(capability=cap, reference=reference, native_isa=isa, triton=triton, act_dtype=act_dtype,
                linear=linear, moe=moe, attention=attention, norm=norm, gguf=gguf)
