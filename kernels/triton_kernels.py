"""The Triton kernels themselves (``@triton.jit``); imported only by ``kernels.triton_ops``.

This module imports triton at the top: nothing else imports it, so CPU-only installs never
do. Launchers, shapes and block sizes live in ``triton_ops``; here each kernel says which
tile it owns and how it walks its loop. With TRITON_INTERPRET=1 set before this module is
imported the same kernels run on CPU tensors (slowly), which is how the tests check them.
"""

from __future__ import annotations

import triton
import triton.language as tl

# ---------------------------------------------------------------------------------------
# weight-only quantized linear: y [M, N] = x [M, K] · Wᵀ, float32 accumulation.
# Each K step covers BLOCK_K columns inside one quantization group (BLOCK_K divides GROUP),
# so the group's scale factors out of the step's partial sum:
#   int4 "nibbles": Σ x·((c - 8) s + z) = s Σ x (c - 8) + z Σ x      (c: 4-bit code)
#   int8 "codes":   Σ x·(u - 127.5) s   = s (Σ x (u - 128) + Σ x / 2)  (u: 8-bit code)
# The integer parts (c - 8, u - 128) are exact in bf16/fp16, so tl.dot sees exact weights.
# x may have fewer columns (K) than the padded weight (K'); its missing columns read as 0.
#
# UPCAST (set by the launchers for bf16/fp16 in the interpreter only): Triton's CPU interpreter
# multiplies bf16 dot operands as raw integers and casts ints to bf16 bitwise, so there the
# dots run in float32 on the same (already rounded) operand values. On CUDA it is False.


@triton.jit
def _dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _int4_rows(x_ptr, q_ptr, sz_ptr, offs_n, n_ok, K, KP, NP,
               GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """x (one row, K entries) · W[offs_n]ᵀ for an int4 "nibbles" weight: [BLOCK_N] float32.
    A K step spans BLOCK_K // GROUP whole groups, each summed alone before its (scale, zero)."""
    HALF: tl.constexpr = BLOCK_K // 2
    NG: tl.constexpr = BLOCK_K // GROUP
    offs_j = tl.arange(0, HALF)
    offs_g = tl.arange(0, NG)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + 2 * offs_j                                                  # even columns
        xe = tl.load(x_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
        xo = tl.load(x_ptr + kk + 1, mask=kk + 1 < K, other=0.0).to(tl.float32)
        p = tl.load(q_ptr + offs_n[:, None] * (KP // 2) + (k0 // 2 + offs_j)[None, :],
                    mask=n_ok[:, None] & (kk < KP)[None, :], other=0)        # [BLOCK_N, HALF] bytes
        lo = (p & 15).to(tl.float32) - 8.0
        hi = (p >> 4).to(tl.float32) - 8.0
        part = tl.sum(tl.reshape(lo * xe[None, :] + hi * xo[None, :], [BLOCK_N, NG, GROUP // 2]), axis=2)
        xs = tl.sum(tl.reshape(xe + xo, [NG, GROUP // 2]), axis=1)           # [NG]
        gi = k0 // GROUP + offs_g
        ok = n_ok[:, None] & (gi < KP // GROUP)[None, :]
        sz = sz_ptr + (gi[None, :] * NP + offs_n[:, None]) * 2                # [BLOCK_N, NG]
        s = tl.load(sz, mask=ok, other=0.0).to(tl.float32)
        z = tl.load(sz + 1, mask=ok, other=0.0).to(tl.float32)
        acc += tl.sum(s * part + z * xs[None, :], axis=1)
    return acc


@triton.jit
def _int8_rows(x_ptr, u_ptr, s_ptr, offs_n, n_ok, K, KP, NP,
               GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """As _int4_rows for an int8 "codes" weight."""
    NG: tl.constexpr = BLOCK_K // GROUP
    offs_k = tl.arange(0, BLOCK_K)
    offs_g = tl.arange(0, NG)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        x = tl.load(x_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs_n[:, None] * KP + kk[None, :], mask=n_ok[:, None] & (kk < KP)[None, :], other=128)
        part = tl.sum(tl.reshape((u.to(tl.float32) - 128.0) * x[None, :], [BLOCK_N, NG, GROUP]), axis=2)
        xs = tl.sum(tl.reshape(x, [NG, GROUP]), axis=1)                      # [NG]
        gi = k0 // GROUP + offs_g
        s = tl.load(s_ptr + gi[None, :] * NP + offs_n[:, None],
                    mask=n_ok[:, None] & (gi < KP // GROUP)[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(s * (part + 0.5 * xs[None, :]), axis=1)
    return acc


@triton.jit
def int4_gemv(x_ptr, q_ptr, sz_ptr, y_ptr, N, K, KP, NP, stride_xm, stride_ym,
              GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (cdiv(N, BLOCK_N), M): one row of x, BLOCK_N outputs
    pid_n, m = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    acc = _int4_rows(x_ptr + m * stride_xm, q_ptr, sz_ptr, offs_n, n_ok, K, KP, NP, GROUP, BLOCK_N, BLOCK_K)
    tl.store(y_ptr + m * stride_ym + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def int4_mm(x_ptr, q_ptr, sz_ptr, y_ptr, M, N, K, KP_HALF, NP, stride_xm, stride_ym,
            GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            PREC: tl.constexpr, UPCAST: tl.constexpr):
    # grid (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N)); x's even and odd columns meet the low and
    # high nibbles in two dots, so the packed bytes never need interleaving
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    HALF: tl.constexpr = BLOCK_K // 2
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    offs_j = tl.arange(0, HALF)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + 2 * offs_j
        xrow = x_ptr + offs_m[:, None] * stride_xm
        xe = tl.load(xrow + kk[None, :], mask=m_ok[:, None] & (kk[None, :] < K), other=0.0)       # [BM, HALF]
        xo = tl.load(xrow + kk[None, :] + 1, mask=m_ok[:, None] & (kk[None, :] + 1 < K), other=0.0)
        p = tl.load(q_ptr + offs_n[None, :] * KP_HALF + (k0 // 2 + offs_j)[:, None],
                    mask=n_ok[None, :], other=0)                                                 # [HALF, BN]
        lo = (p & 15).to(tl.float32) - 8.0          # exact in any float type
        hi = (p >> 4).to(tl.float32) - 8.0
        part = _dot(xe, lo.to(xe.dtype), PREC, UPCAST) + _dot(xo, hi.to(xe.dtype), PREC, UPCAST)   # [BM, BN]
        xsum = tl.sum(xe.to(tl.float32), axis=1) + tl.sum(xo.to(tl.float32), axis=1)            # [BM]
        sz = sz_ptr + ((k0 // GROUP) * NP + offs_n) * 2
        s = tl.load(sz, mask=n_ok, other=0.0).to(tl.float32)
        z = tl.load(sz + 1, mask=n_ok, other=0.0).to(tl.float32)
        acc += part * s[None, :] + xsum[:, None] * z[None, :]
    y = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def int8_gemv(x_ptr, u_ptr, s_ptr, y_ptr, N, K, KP, NP, stride_xm, stride_ym,
              GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n, m = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    acc = _int8_rows(x_ptr + m * stride_xm, u_ptr, s_ptr, offs_n, n_ok, K, KP, NP, GROUP, BLOCK_N, BLOCK_K)
    tl.store(y_ptr + m * stride_ym + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def int8_mm(x_ptr, u_ptr, s_ptr, y_ptr, M, N, K, KP, NP, stride_xm, stride_ym,
            GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            PREC: tl.constexpr, UPCAST: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :],
                    mask=m_ok[:, None] & (kk[None, :] < K), other=0.0)                            # [BM, BK]
        u = tl.load(u_ptr + offs_n[None, :] * KP + kk[:, None], mask=n_ok[None, :], other=128)    # [BK, BN]
        c = (u.to(tl.float32) - 128.0).to(x.dtype)      # exact in bf16/fp16
        part = _dot(x, c, PREC, UPCAST)
        s = tl.load(s_ptr + (k0 // GROUP) * NP + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        acc += (part + 0.5 * tl.sum(x.to(tl.float32), axis=1)[:, None]) * s[None, :]
    y = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# ---------------------------------------------------------------------------------------
# MoE decode (one token): every selected expert's SwiGLU MLP in two launches. The experts'
# weights stay separate tensors; tables of their addresses (int64) are indexed by expert id.


@triton.jit
def _rows(x_ptr, q_tab, s_tab, e, offs_n, n_ok, K, KP, NP,
          INT4: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    q = tl.load(q_tab + e).to(tl.pointer_type(tl.uint8))
    s = tl.load(s_tab + e).to(tl.pointer_type(tl.bfloat16))
    if INT4:
        return _int4_rows(x_ptr, q, s, offs_n, n_ok, K, KP, NP, GROUP, BLOCK_N, BLOCK_K)
    return _int8_rows(x_ptr, q, s, offs_n, n_ok, K, KP, NP, GROUP, BLOCK_N, BLOCK_K)


@triton.jit
def moe_up(x_ptr, idx_ptr, q_tab, s_tab, act_ptr, I, H, HP, NP,
           INT4: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (cdiv(I, BLOCK_N), top-k): slot j's expert, rows n (gate) and I + n (up) of w13
    # [2I, H] -> act[j, n] = silu(gate) · up in float32, stored in the activations' dtype
    pid_n, j = tl.program_id(0), tl.program_id(1)
    e = tl.load(idx_ptr + j)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    g = _rows(x_ptr, q_tab, s_tab, e, offs_n, n_ok, H, HP, NP, INT4, GROUP, BLOCK_N, BLOCK_K)
    u = _rows(x_ptr, q_tab, s_tab, e, offs_n + I, n_ok, H, HP, NP, INT4, GROUP, BLOCK_N, BLOCK_K)
    tl.store(act_ptr + j * I + offs_n, (g / (1.0 + tl.exp(-g)) * u).to(act_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def moe_down(act_ptr, idx_ptr, w_ptr, q_tab, s_tab, y_ptr, H, I, IP, NP, TOPK,
             INT4: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (cdiv(H, BLOCK_N),): y[n] = Σ_j weight_j · (w2[e_j] act_j)[n], w2 [H, I]
    pid_n = tl.program_id(0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < H
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j in range(TOPK):
        e = tl.load(idx_ptr + j)
        w = tl.load(w_ptr + j).to(tl.float32)
        acc += w * _rows(act_ptr + j * I, q_tab, s_tab, e, offs_n, n_ok, I, IP, NP, INT4, GROUP, BLOCK_N, BLOCK_K)
    tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_ok)


# ---------------------------------------------------------------------------------------
# absorbed MLA attention over the latent cache, split over the sequence (flash-decoding):
# program (b·T + t, head block, split) runs an online softmax over its share of the rows
# s <= start_pos + t, giving (max, sum, unnormalised latent output); one split writes the
# result directly, several are merged by mla_combine.


@triton.jit
def mla_partial(q_ptr, c_ptr, out_ptr, part_ptr, ml_ptr,
                T, H, R, P, valid, start_pos, scale, rows_per_split, n_split,
                sq_b, sq_t, sq_h, sc_b, sc_s,
                BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_P: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, DIRECT: tl.constexpr):
    bt, hb, sp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, t = bt // T, bt % T
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_r = tl.arange(0, BLOCK_R)
    offs_p = tl.arange(0, BLOCK_P)
    h_ok, r_ok, p_ok = offs_h < H, offs_r < R, offs_p < P
    qh = q_ptr + b * sq_b + t * sq_t + offs_h[:, None] * sq_h
    q_lat = tl.load(qh + offs_r[None, :], mask=h_ok[:, None] & r_ok[None, :], other=0.0)        # [BH, BR]
    q_pe = tl.load(qh + R + offs_p[None, :], mask=h_ok[:, None] & p_ok[None, :], other=0.0)     # [BH, BP]
    lo = sp * rows_per_split
    hi = tl.minimum(tl.minimum(lo + rows_per_split, start_pos + t + 1), valid)   # causal end
    m_i = tl.full([BLOCK_H], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_R], dtype=tl.float32)
    cb = c_ptr + b * sc_b
    for s0 in range(lo, hi, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_ok = offs_s < hi
        rows = cb + offs_s[:, None] * sc_s
        c = tl.load(rows + offs_r[None, :], mask=s_ok[:, None] & r_ok[None, :], other=0.0)     # [BS, BR]
        kp = tl.load(rows + R + offs_p[None, :], mask=s_ok[:, None] & p_ok[None, :], other=0.0)
        scores = (_dot(q_lat, tl.trans(c), PREC, UPCAST) + _dot(q_pe, tl.trans(kp), PREC, UPCAST)) * scale  # [BH, BS]
        scores = tl.where(s_ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.to(c.dtype), c, PREC, UPCAST)
        m_i = m_new
    if DIRECT:
        o = out_ptr + (bt * H + offs_h[:, None]) * R + offs_r[None, :]
        tl.store(o, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=h_ok[:, None] & r_ok[None, :])
    else:
        row = (bt * H + offs_h) * n_split + sp                                                  # [BH]
        tl.store(part_ptr + row[:, None] * R + offs_r[None, :], acc, mask=h_ok[:, None] & r_ok[None, :])
        tl.store(ml_ptr + row * 2, m_i, mask=h_ok)
        tl.store(ml_ptr + row * 2 + 1, l_i, mask=h_ok)


@triton.jit
def mla_combine(part_ptr, ml_ptr, out_ptr, R, n_split,
                BLOCK_SPLIT: tl.constexpr, CHUNK: tl.constexpr, BLOCK_R: tl.constexpr):
    # program ((b·T + t)·H + h, latent block): weigh each split by exp(its max - the overall max),
    # CHUNK splits at a time (a [CHUNK, BLOCK_R] tile stays in registers)
    row, rb = tl.program_id(0), tl.program_id(1)
    offs_sp = tl.arange(0, BLOCK_SPLIT)
    offs_r = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    m_all = tl.load(ml_ptr + (row * n_split + offs_sp) * 2, mask=offs_sp < n_split, other=float("-inf"))
    m_max = tl.max(m_all, axis=0)
    l_all = tl.load(ml_ptr + (row * n_split + offs_sp) * 2 + 1, mask=offs_sp < n_split, other=0.0)
    total = tl.sum(l_all * tl.exp(m_all - m_max), axis=0)
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    offs_c = tl.arange(0, CHUNK)
    for s0 in range(0, n_split, CHUNK):
        sp = s0 + offs_c
        sp_ok = sp < n_split
        w = tl.exp(tl.load(ml_ptr + (row * n_split + sp) * 2, mask=sp_ok, other=float("-inf")) - m_max)
        part = tl.load(part_ptr + (row * n_split + sp)[:, None] * R + offs_r[None, :],
                       mask=sp_ok[:, None] & r_ok[None, :], other=0.0)                     # [CHUNK, BR]
        acc += tl.sum(part * w[:, None], axis=0)
    tl.store(out_ptr + row * R + offs_r, (acc / total).to(out_ptr.dtype.element_ty), mask=r_ok)


# ---------------------------------------------------------------------------------------
# RMSNorm (optionally after a residual add), RoPE, FP8 block dequant


@triton.jit
def rms_norm(x_ptr, r_ptr, w_ptr, h_ptr, y_ptr, D, eps,
             HAS_RES: tl.constexpr, BLOCK_D: tl.constexpr):
    # one row per program; rows are contiguous [rows, D]
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_D)
    ok = offs < D
    x = tl.load(x_ptr + row * D + offs, mask=ok, other=0.0)
    if HAS_RES:   # h = x + residual, rounded to x's dtype as torch's add does; then normalise h
        x = (x.to(tl.float32) + tl.load(r_ptr + row * D + offs, mask=ok, other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(h_ptr + row * D + offs, x, mask=ok)
    xf = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / D + eps)
    n = (xf * inv).to(x.dtype).to(tl.float32)     # the reference casts back before the weight
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * D + offs, (w * n).to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def rope(x_ptr, cos_ptr, sin_ptr, y_ptr, T, HEADS, HALF,
         INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    # program (leading index · T + t): all heads of one position; x, y contiguous [L, T, HEADS, 2·HALF]
    lt = tl.program_id(0)
    t = lt % T
    offs_h = tl.arange(0, BLOCK_H)
    offs_i = tl.arange(0, BLOCK_HALF)
    i_ok = offs_i < HALF
    c = tl.load(cos_ptr + t * HALF + offs_i, mask=i_ok, other=0.0).to(tl.float32)[None, :]
    s = tl.load(sin_ptr + t * HALF + offs_i, mask=i_ok, other=0.0).to(tl.float32)[None, :]
    for h0 in range(0, HEADS, BLOCK_H):
        hh = h0 + offs_h
        ok = (hh < HEADS)[:, None] & i_ok[None, :]
        base = (lt * HEADS + hh[:, None]) * (2 * HALF)
        if INTERLEAVED:
            ia, ib = base + 2 * offs_i[None, :], base + 2 * offs_i[None, :] + 1
        else:
            ia, ib = base + offs_i[None, :], base + HALF + offs_i[None, :]
        a = tl.load(x_ptr + ia, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(x_ptr + ib, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + ia, (a * c - b * s).to(y_ptr.dtype.element_ty), mask=ok)
        tl.store(y_ptr + ib, (b * c + a * s).to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def fp8_dequant(w_ptr, s_ptr, out_ptr, O, I, stride_s, stride_out,
                BLOCK: tl.constexpr, ROWS: tl.constexpr):
    # grid (cdiv(O, ROWS), cdiv(I, BLOCK)); ROWS divides BLOCK, so a tile has one scale.
    # w is the float8_e4m3fn weight viewed as bytes, decoded by hand (Triton's fp8e4nv type
    # needs sm_89+): e4m3's exponent and mantissa fields, moved into fp16's, give the value
    # / 2^8 exactly, subnormals included (both formats' subnormals line up); 0x7f/0xff are NaN.
    pid_r, pid_c = tl.program_id(0), tl.program_id(1)
    offs_r = pid_r * ROWS + tl.arange(0, ROWS)
    offs_c = pid_c * BLOCK + tl.arange(0, BLOCK)
    ok = (offs_r < O)[:, None] & (offs_c < I)[None, :]
    bits = tl.load(w_ptr + offs_r[:, None] * I + offs_c[None, :], mask=ok, other=0).to(tl.uint16)
    half = ((bits & 0x7F) << 7) | ((bits & 0x80) << 8)
    w = half.to(tl.float16, bitcast=True).to(tl.float32) * 256.0
    w = tl.where((bits & 0x7F) == 0x7F, float("nan"), w)
    s = tl.load(s_ptr + ((pid_r * ROWS) // BLOCK) * stride_s + pid_c)
    tl.store(out_ptr + offs_r[:, None] * stride_out + offs_c[None, :],
             (w * s).to(out_ptr.dtype.element_ty), mask=ok)
