"""RoPE angle tables for the decoupled rope dims, with DeepSeek's YaRN when configured."""

from __future__ import annotations

import math

import torch

from local_engine.config import ModelArgs, yarn_mscale


def inv_freq_and_attention_factor(args: ModelArgs) -> tuple[torch.Tensor, float]:
    dim, base = args.qk_rope_head_dim, args.rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    rs = args.rope_scaling
    if not rs:
        return freqs, 1.0
    factor = float(rs["factor"])
    original = rs["original_max_position_embeddings"]
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1 where the original frequency is kept
    freqs = (freqs / factor) * (1 - extrapolate) + freqs * extrapolate
    factor_attn = rs.get("attention_factor")
    if factor_attn is None:
        m, m_all = rs.get("mscale"), rs.get("mscale_all_dim")
        factor_attn = yarn_mscale(factor, m) / yarn_mscale(factor, m_all) if m and m_all else yarn_mscale(factor)
    return freqs, float(factor_attn)


def rope_tables(args: ModelArgs, max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [max_seq_len, rope/2] float32, already scaled by YaRN's attention factor."""
    inv_freq, attn_factor = inv_freq_and_attention_factor(args)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    return angles.cos() * attn_factor, angles.sin() * attn_factor
