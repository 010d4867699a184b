"""The two demo models' shapes, and DeepSeek-V3's multi-token-prediction module.

The reasoner is a genuine ``DeepseekV3ForCausalLM`` (MLA with q-LoRA and decoupled RoPE,
fine-grained MoE with a shared expert, sigmoid gating with a bias, grouped routing, first
layer dense) plus one MTP module stored as ``model.layers.{num_hidden_layers}.*`` with V3's
names (enorm, hnorm, eh_proj, shared_head.norm, shared_head.head, embed_tokens, and a full
block), which transformers ignores. The coder is a small Llama written to GGUF.
"""

from __future__ import annotations

import torch
from torch import nn


def causal_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
    """Training attention: right-padded batches need only the causal mask, so torch's fused
    CPU kernel runs (forward and backward) instead of the masked matmul-softmax path. It needs
    one head size, so V (32) is zero-padded to Q/K's (48) and cut back after."""
    import torch.nn.functional as F

    dq, dv = query.shape[-1], value.shape[-1]
    if dv < dq:
        value = F.pad(value, (0, dq - dv))
    out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
    return out[..., :dv].transpose(1, 2).contiguous(), None


def use_training_attention(config):
    """Switch a config to `causal_attention` (not saved: transformers keeps it out of config.json)."""
    from transformers import AttentionInterface

    AttentionInterface.register("duet_train_causal", causal_attention)
    config._attn_implementation = "duet_train_causal"
    return config


def reasoner_config(vocab_size: int, **over):
    from transformers import DeepseekV3Config

    cfg = dict(
        vocab_size=vocab_size, hidden_size=192, intermediate_size=512, moe_intermediate_size=96,
        num_hidden_layers=6, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=2, topk_group=1,
        routed_scaling_factor=1.0, norm_topk_prob=True, rope_interleave=True, max_position_embeddings=2048,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, num_nextn_predict_layers=1,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, initializer_range=0.02,
    )
    cfg.update(over)
    config = DeepseekV3Config(**cfg)
    config._attn_implementation = "sdpa"
    return config


def coder_config(vocab_size: int, **over):
    from transformers import LlamaConfig

    cfg = dict(vocab_size=vocab_size, hidden_size=192, intermediate_size=512, num_hidden_layers=6,
               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, rope_theta=10000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=1,
               initializer_range=0.02)
    cfg.update(over)
    config = LlamaConfig(**cfg)
    config._attn_implementation = "sdpa"
    return config


def prompt_loss(head, h, prompt_labels):
    """Next-token loss on the prompt's own tokens: code and plans repeat names and lines, so
    predicting them teaches the copying (induction) the answers need, from every example."""
    import torch.nn.functional as F

    want = prompt_labels[:, 1:] != -100
    return F.cross_entropy(head(h[:, :-1][want]).float(), prompt_labels[:, 1:][want])


class MTP(nn.Module):
    """V3's MTP module (depth 1): at position i it reads the main model's final hidden state
    h_i (after ``model.norm``) and the embedding of token i+1, and predicts token i+2:
    ``x = eh_proj([enorm(emb(t_{i+1})); hnorm(h_i)]); x = block(x); logits = shared_head.head(shared_head.norm(x))``.
    The embedding is the main model's (V3 shares it); the head is its own copy here."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer, DeepseekV3RMSNorm

        H = config.hidden_size
        self.enorm = DeepseekV3RMSNorm(H, config.rms_norm_eps)
        self.hnorm = DeepseekV3RMSNorm(H, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * H, H, bias=False)
        self.block = DeepseekV3DecoderLayer(config, layer_idx=config.num_hidden_layers)
        self.shared_head = nn.Module()
        self.shared_head.norm = DeepseekV3RMSNorm(H, config.rms_norm_eps)
        self.shared_head.head = nn.Linear(H, config.vocab_size, bias=False)

    def forward(self, next_emb, hidden, position_embeddings, mask):
        x = self.eh_proj(torch.cat([self.enorm(next_emb), self.hnorm(hidden)], dim=-1))
        x = self.block(x, position_embeddings=position_embeddings, attention_mask=mask)
        return self.shared_head.head(self.shared_head.norm(x))


class Reasoner(nn.Module):
    """The V3 model and its MTP module, trained together (V3's loss: L_main + λ·L_MTP)."""

    def __init__(self, config):
        super().__init__()
        from transformers import DeepseekV3ForCausalLM

        self.lm = DeepseekV3ForCausalLM(config)
        self.mtp = MTP(config)
        self.mtp.apply(self.lm._init_weights)
        with torch.no_grad():
            self.mtp.shared_head.head.weight.copy_(self.lm.lm_head.weight)

    def forward(self, ids, labels, mtp_weight: float = 0.3, prompt_labels=None, prompt_weight: float = 0.0,
                weights=None):
        """``weights`` (same shape as ``labels``, or None): each answer token's weight in the main
        loss (the mean stays over tokens, so a weight above 1 adds to that token's pull)."""
        import torch.nn.functional as F

        inner = self.lm.model
        emb = inner.embed_tokens(ids)
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        out = inner(inputs_embeds=emb, position_ids=pos)
        h = out.last_hidden_state  # after model.norm
        # the head only where there is a target (the prompt's positions have none): half the cost
        want = labels[:, 1:] != -100
        each = F.cross_entropy(self.lm.lm_head(h[:, :-1][want]).float(), labels[:, 1:][want], reduction="none")
        main = each.mean()
        fit = main if weights is None else (each * weights[:, 1:][want]).mean()
        loss = fit + prompt_weight * prompt_loss(self.lm.lm_head, h, prompt_labels) if prompt_weight else fit
        # MTP: position i (0..T-3) sees h_i and emb(t_{i+1}), predicts t_{i+2}
        pe = inner.rotary_emb(h, pos[:, :-1])
        x = self.mtp.eh_proj(torch.cat([self.mtp.enorm(emb[:, 1:]), self.mtp.hnorm(h[:, :-1])], dim=-1))
        x = self.mtp.block(x, position_embeddings=pe, attention_mask=None)
        want2 = labels[:, 2:] != -100
        mtp_logits = self.mtp.shared_head.head(self.mtp.shared_head.norm(x[:, :-1][want2]))
        mtp = F.cross_entropy(mtp_logits.float(), labels[:, 2:][want2])
        return loss + mtp_weight * mtp, main.detach(), mtp.detach()

    def gates(self):
        mods = [layer.mlp.gate for layer in self.lm.model.layers if hasattr(layer.mlp, "gate")]
        return mods + [self.mtp.block.mlp.gate]

    def save(self, folder):
        """HF layout: transformers' own files, then the MTP tensors added as model.layers.{L}.*"""
        from safetensors.torch import load_file, save_file

        self.lm.save_pretrained(folder, safe_serialization=True)
        path = f"{folder}/model.safetensors"
        tensors = load_file(path)
        L = self.lm.config.num_hidden_layers
        prefix = f"model.layers.{L}."
        block = _per_expert(self.mtp.block.state_dict())
        for name, t in block.items():
            tensors[prefix + name] = t
        for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight", "shared_head.head.weight"):
            tensors[prefix + name] = self.mtp.state_dict()[name]
        tensors[prefix + "embed_tokens.weight"] = self.lm.model.embed_tokens.weight.detach()
        tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
        save_file(tensors, path, metadata={"format": "pt"})

    def load(self, folder):
        """The weights of a saved reasoner (``save``'s HF folder, its MTP module at
        model.layers.{L}), to train it on (a second schedule)."""
        from safetensors.torch import load_file
        from transformers import DeepseekV3ForCausalLM

        saved = DeepseekV3ForCausalLM.from_pretrained(folder, config=self.lm.config, dtype=torch.float32)
        self.lm.load_state_dict(saved.state_dict())
        prefix = f"model.layers.{self.lm.config.num_hidden_layers}."
        own = ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight", "shared_head.head.weight")
        mtp = {k[len(prefix):]: v.float() for k, v in load_file(f"{folder}/model.safetensors").items()
               if k.startswith(prefix) and k != prefix + "embed_tokens.weight"}   # (the embedding is the model's)
        block = _fused({k: v for k, v in mtp.items() if k not in own}, self.mtp.block.state_dict())
        self.mtp.load_state_dict({**{k: mtp[k] for k in own}, **{"block." + k: v for k, v in block.items()}})


def _per_expert(state: dict) -> dict:
    """transformers fuses experts in memory; checkpoints (and save_pretrained) name them one by one."""
    out = {}
    for name, t in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            inter = t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = t[e, :inter]
                out[f"{base}{e}.up_proj.weight"] = t[e, inter:]
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = t[e]
        else:
            out[name] = t
    return out


def _fused(state: dict, like: dict) -> dict:
    """``_per_expert``'s inverse: the experts one by one fused as ``like`` (a module's state) holds them."""
    out = {k: v for k, v in state.items() if ".experts." not in k}
    for name, t in like.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            out[name] = torch.stack([torch.cat([state[f"{base}{e}.gate_proj.weight"], state[f"{base}{e}.up_proj.weight"]])
                                     for e in range(t.shape[0])])
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            out[name] = torch.stack([state[f"{base}{e}.down_proj.weight"] for e in range(t.shape[0])])
    return out


class Coder(nn.Module):
    def __init__(self, config):
        super().__init__()
        from transformers import LlamaForCausalLM

        self.lm = LlamaForCausalLM(config)

    def forward(self, ids, labels, prompt_labels=None, prompt_weight: float = 0.0, weights=None):
        """``weights``: as the reasoner's (each answer token's weight in the main loss, or None)."""
        import torch.nn.functional as F

        h = self.lm.model(input_ids=ids).last_hidden_state
        want = labels[:, 1:] != -100
        each = F.cross_entropy(self.lm.lm_head(h[:, :-1][want]).float(), labels[:, 1:][want], reduction="none")
        main = each.mean()
        fit = main if weights is None else (each * weights[:, 1:][want]).mean()
        loss = fit + prompt_weight * prompt_loss(self.lm.lm_head, h, prompt_labels) if prompt_weight else fit
        return loss, main.detach(), main.detach() * 0

    def gates(self):
        return []

    def save(self, folder):
        self.lm.save_pretrained(folder, safe_serialization=True)
