"""The Triton kernels agree with their PyTorch references, run by Triton's CPU interpreter;
dispatch sends CUDA tensors (only) to them.

TRITON_INTERPRET=1 must be set before ``kernels.triton_kernels`` is imported: triton.jit reads it
when it decorates each kernel. Nothing else imports that module, but to be safe against an
earlier non-interpreted import in the same process it is reloaded below if needed.

Tolerances: float32 results match to 1e-5 (only the summation order differs; 1e-4 for the MoE's
two chained matmuls). bfloat16 ones to 2e-2 relative: besides the order, the interpreter rounds
float32 -> bfloat16 by truncation where CUDA rounds to nearest, so an element may sit one bf16
step (2^-7 relative) off the reference. FP8 dequant to float32 is exact.
bench/cuda_check.py checks the same kernels on a GPU; the last test here compiles them for one.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"   # before the kernels are decorated (see above)

import importlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

from kernels import dispatch, fp8, mla, moe, norm_rope, quant, triton_kernels, triton_ops  # noqa: E402
from tests.tiny_checkpoints import fp8_quantize  # noqa: E402

if not type(triton_kernels.rms_norm).__name__ == "InterpretedFunction":
    triton_kernels = importlib.reload(triton_kernels)

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [torch.float32, torch.bfloat16]


def tol(dtype):
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}


def portable(w: torch.Tensor, mode: str, group: int) -> quant.QuantizedWeight:
    """A quantized weight in the portable layout the Triton kernels read (int4 nibbles, int8 codes);
    on CPU ``quantize_weight`` hands back a packed layout (aten's or the native kernel's) instead."""
    qw = quant.quantize_weight(w, mode, group_size=group)
    return quant.QuantizedWeight(mode, qw.shape, qw.group_size, quant.to_codes(qw),
                                 "nibbles" if mode == "int4" else "codes")


# ---------------------------------------------------------------------------------------
# quantized linear: the GEMV kernel (M <= 4) and the tiled tl.dot kernel (M > 4)

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 19])
@pytest.mark.parametrize("mode,n,k,group", [("int4", 13, 70, 32), ("int4", 37, 300, 64),
                                             ("int8", 13, 70, 32), ("int8", 21, 300, 128)])
def test_quantized_linear_matches_the_reference(mode, n, k, group, m, dtype):
    g = torch.Generator().manual_seed(n * k + m)
    qw = portable(torch.randn(n, k, generator=g), mode, group)
    x = torch.randn(m, k, generator=g).to(dtype)
    y = triton_ops.quantized_linear(x, qw)
    assert y.shape == (m, n) and y.dtype == dtype
    torch.testing.assert_close(y, quant.reference_quantized_linear(x, qw), **tol(dtype))


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_quantized_linear_keeps_leading_dims_and_takes_zero_padded_inputs(mode):
    g = torch.Generator().manual_seed(7)
    qw = portable(torch.randn(19, 45, generator=g), mode, 32)
    x = torch.randn(2, 1, 45, generator=g)
    ref = quant.reference_quantized_linear(x, qw)
    torch.testing.assert_close(triton_ops.quantized_linear(x, qw), ref, atol=1e-5, rtol=1e-5)
    padded = torch.nn.functional.pad(x, (0, qw.padded_shape[1] - 45))   # [2, 1, 64]
    torch.testing.assert_close(triton_ops.quantized_linear(padded, qw), ref, atol=1e-5, rtol=1e-5)
    assert triton_ops.quantized_linear(torch.zeros(0, 45), qw).shape == (0, 19)


def test_quantized_linear_refuses_packed_layouts_and_wrong_widths():
    qw = portable(torch.randn(16, 64), "int4", 64)
    packed = quant.QuantizedWeight("int4", qw.shape, 64, qw.tensors, "cuda_int4pack")   # as aten's layout says
    with pytest.raises(ValueError, match="layout"):
        triton_ops.quantized_linear(torch.randn(1, 64), packed)
    with pytest.raises(ValueError, match="features"):
        triton_ops.quantized_linear(torch.randn(1, 63), qw)


# ---------------------------------------------------------------------------------------
# MoE decode: the selected quantized SwiGLU experts of one token in two launches

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,group", [("int4", 32), ("int8", 32), ("int4", 64)])
def test_moe_decode_matches_the_reference_combine_of_quantized_experts(mode, group, dtype):
    g = torch.Generator().manual_seed(len(mode) + group)
    H, I, E, K = 45, 23, 5, 3
    w13 = [portable(torch.randn(2 * I, H, generator=g), mode, group) for _ in range(E)]
    w2 = [portable(torch.randn(H, I, generator=g), mode, group) for _ in range(E)]

    def expert(e):   # local_engine's MLP on the reference matmul
        def mlp(x):
            gate, up = quant.reference_quantized_linear(x, w13[e]).split(I, dim=-1)
            return quant.reference_quantized_linear(F.silu(gate) * up, w2[e])
        return mlp

    x = torch.randn(1, H, generator=g).to(dtype)
    idx, w = torch.randperm(E, generator=g)[:K][None], torch.rand(1, K, generator=g)
    out = triton_ops.moe_decode(x, w, idx, triton_ops.ExpertTable(w13, w2))
    assert out.shape == (1, H) and out.dtype == dtype
    if dtype == torch.float32:   # two chained matmuls, summed in another order: 1e-4
        ref = moe.reference_moe(x, w, idx, [expert(e) for e in range(E)])
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    else:   # against the same experts in float32 on the same bf16 input: the kernel keeps float32 inside
        ideal = moe.reference_moe(x.float(), w, idx, [expert(e) for e in range(E)])
        torch.testing.assert_close(out.float(), ideal, rtol=2e-2, atol=2e-2 * ideal.abs().max().item())


def test_expert_table_refuses_mixed_experts_and_moe_decode_more_than_one_token():
    a = portable(torch.randn(8, 32), "int4", 32)
    b = portable(torch.randn(32, 4), "int4", 32)
    with pytest.raises(ValueError, match="differ"):
        triton_ops.ExpertTable([a, a], [b, portable(torch.randn(32, 4), "int8", 32)])
    table = triton_ops.ExpertTable([a], [b])
    with pytest.raises(ValueError, match="one token"):
        triton_ops.moe_decode(torch.randn(2, 32), torch.ones(2, 1), torch.zeros(2, 1, dtype=torch.long), table)


# ---------------------------------------------------------------------------------------
# MLA decode attention: one split writes directly; several (long context) are combined

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,H,R,P,start,extra", [(1, 1, 1, 3, 2, 0, 0),       # a single row
                                                   (1, 1, 5, 48, 8, 117, 10),   # decode, 4 splits
                                                   (1, 1, 2, 20, 4, 69, 3),     # decode, 3 splits
                                                   (2, 4, 3, 33, 6, 9, 5),      # causal T>1 after a prefix
                                                   (1, 2, 3, 16, 4, 100, 0),    # causal T>1, 4 splits
                                                   (1, 7, 20, 10, 4, 0, 0)])    # prefill, 20 heads
def test_mla_attention_matches_the_reference_and_ignores_rows_past_the_queries(B, T, H, R, P, start, extra, dtype):
    g = torch.Generator().manual_seed(B + T + H + start)
    q = torch.randn(B, T, H, R + P, generator=g).to(dtype)
    valid = torch.randn(B, start + T, R + P, generator=g).to(dtype)
    stale = torch.randn(B, extra, R + P, generator=g).mul(1e3).to(dtype)
    out = triton_ops.mla_attention(q, torch.cat([valid, stale], dim=1), R, 0.3, start)
    assert out.shape == (B, T, H, R) and out.dtype == dtype
    torch.testing.assert_close(out, mla.reference_mla_attention(q, valid, R, 0.3, start), **tol(dtype))


# ---------------------------------------------------------------------------------------
# RMSNorm (+ fused residual add), RoPE, FP8 dequant

@pytest.mark.parametrize("wdtype", [None, torch.float32])   # None: the weight has x's dtype
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 7), (3, 5, 33), (2, 1, 130)])
def test_rms_norm_matches_the_reference_including_its_result_dtype(shape, dtype, wdtype):
    g = torch.Generator().manual_seed(shape[-1])
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    w = (1 + 0.3 * torch.randn(shape[-1], generator=g)).to(wdtype or dtype)
    ref = norm_rope.reference_rms_norm(x, w, 1e-6)
    out = triton_ops.rms_norm(x, w, 1e-6)
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_returns_the_sum_and_its_norm(dtype):
    g = torch.Generator().manual_seed(11)
    x, r = (torch.randn(2, 3, 45, generator=g).to(dtype) for _ in range(2))
    w = torch.randn(45, generator=g).to(dtype)
    h, y = triton_ops.add_rms_norm(x, r, w, 1e-6)
    torch.testing.assert_close(h, x + r, **tol(dtype))
    torch.testing.assert_close(y, norm_rope.reference_rms_norm(x + r, w, 1e-6), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("B,T,H,D", [(1, 1, 1, 2), (2, 7, 3, 10), (1, 3, 17, 64)])
def test_rope_matches_the_reference(B, T, H, D, interleaved, dtype):
    g = torch.Generator().manual_seed(T * H)
    x = torch.randn(B, T, H, D, generator=g).to(dtype)
    angles = torch.rand(T, D // 2, generator=g) * 50
    out = triton_ops.apply_rope(x, angles.cos(), angles.sin(), interleaved)
    torch.testing.assert_close(out, norm_rope.reference_apply_rope(x, angles.cos(), angles.sin(), interleaved),
                               **tol(dtype))


def test_fp8_dequant_decodes_every_e4m3_byte_as_torch_does():
    every = torch.arange(256, dtype=torch.uint8).view(2, 128).view(torch.float8_e4m3fn)   # NaN twice
    out, ref = triton_ops.fp8_block_dequant(every, torch.ones(1, 1)), every.float()
    assert torch.equal(out.isnan(), ref.isnan()) and ref.isnan().sum() == 2
    assert torch.equal(out[~ref.isnan()], ref[~ref.isnan()])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (127, 129), (300, 200), (256, 128)])
def test_fp8_dequant_matches_the_reference(shape, dtype):
    q, s = fp8_quantize(torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    out = triton_ops.fp8_block_dequant(q, s, dtype)
    ref = fp8.reference_fp8_block_dequant(q, s, dtype)
    assert out.dtype == dtype
    # float32: one product per element, exactly the reference's. bf16: one rounding of it
    torch.testing.assert_close(out, ref, atol=0, rtol=0 if dtype == torch.float32 else 2 ** -7)


def test_fp8_dequant_writes_into_a_given_buffer_and_checks_scale_shapes():
    q, s = fp8_quantize(torch.randn(200, 130, generator=torch.Generator().manual_seed(4)))
    big = torch.zeros(400, 130)
    got = triton_ops.fp8_block_dequant(q, s, torch.float32, out=big[200:])
    assert got.data_ptr() == big[200:].data_ptr() and big[:200].abs().sum() == 0
    torch.testing.assert_close(big[200:], fp8.reference_fp8_block_dequant(q, s), atol=0, rtol=0)
    with pytest.raises(ValueError, match="weight_scale_inv"):
        triton_ops.fp8_block_dequant(q, torch.ones(1, 1))


# ---------------------------------------------------------------------------------------
# dispatch

def test_the_plan_runs_triton_on_cuda_tensors_only_where_it_is_installed_and_switched_on(monkeypatch):
    try:
        assert dispatch.replan().triton                          # this test module runs where triton imports
        monkeypatch.setattr(triton_ops, "_AVAILABLE", False)     # as where triton does not import
        assert not dispatch.replan().triton
        monkeypatch.setattr(triton_ops, "_AVAILABLE", True)
        monkeypatch.setenv("DUET_TRITON", "0")                   # the switch back to PyTorch on CUDA
        assert not dispatch.replan().triton
        monkeypatch.delenv("DUET_TRITON")
        monkeypatch.setenv("DUET_KERNELS", "reference")          # every op's reference
        p = dispatch.replan()
        assert not p.triton and p.reference and p.attention.attention == p.norm.norm == "reference"
    finally:
        monkeypatch.undo()
        dispatch.replan()


def test_cpu_tensors_run_the_pytorch_paths_bit_for_bit():
    g = torch.Generator().manual_seed(9)
    x, w = torch.randn(9, 33, generator=g).bfloat16(), torch.randn(33, generator=g).bfloat16()  # > native rows
    assert torch.equal(norm_rope.rms_norm(x, w, 1e-6), norm_rope.torch_rms_norm(x, w, 1e-6))
    q, cache = torch.randn(1, 2, 3, 12, generator=g), torch.randn(1, 70, 12, generator=g)
    assert torch.equal(mla.mla_attention(q, cache, 8, 0.3, 5), mla.torch_mla_attention(q, cache, 8, 0.3, 5))
    fq, fs = fp8_quantize(torch.randn(130, 20, generator=g))
    assert torch.equal(fp8.fp8_block_dequant(fq, fs, torch.bfloat16), fp8.torch_fp8_block_dequant(fq, fs, torch.bfloat16))


def test_importing_the_kernels_does_not_import_triton():
    code = ("import sys, torch; from kernels import dispatch, norm_rope, triton_ops, quant, mla; "
            "x = torch.randn(2, 8); norm_rope.rms_norm(x, torch.ones(8), 1e-6); dispatch.describe(); "
            "assert 'triton' not in sys.modules, 'triton imported'")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_kernel_compiles_for_a100_and_h100_class_gpus_without_spilling():
    """No GPU here, but Triton compiles for one: the launchers at V2-Lite and R1 shapes (meta
    tensors), sm_80 and sm_90, checked by ptxas for shared memory and register spills."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "cuda_check.py"), "--compile-only", "--arch", "80,90"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("compiled ") == 2, done.stdout
    names = {line.split()[0] for line in done.stdout.splitlines() if line.strip() and
             not line.startswith(("compiled ", "kernel "))}
    assert names == {"int4_gemv", "int4_mm", "int8_gemv", "int8_mm", "moe_up", "moe_down", "mla_partial",
                     "mla_combine", "rms_norm", "rope", "fp8_dequant"}, done.stdout
