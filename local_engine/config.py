"""ModelArgs: one config object, read once from config.json with the checkpoint's field names."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from local_engine.errors import ModelError

ARCHITECTURES = ("DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV32ForCausalLM")
_MODEL_TYPES = {"deepseek_v3": ARCHITECTURES[0], "deepseek_v2": ARCHITECTURES[1], "deepseek_v32": ARCHITECTURES[2]}


@dataclass
class ModelArgs:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    n_routed_experts: int | None
    n_shared_experts: int | None
    num_experts_per_tok: int
    first_k_dense_replace: int
    moe_layer_freq: int = 1
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = False
    scoring_func: str = "softmax"  # "sigmoid" (V3) | "softmax" (V2)
    topk_method: str = "greedy"  # "noaux_tc" | "greedy" | "group_limited_greedy"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"type": "yarn", factor, original_max_position_embeddings, ...}
    rope_interleave: bool = True
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    fp8: bool = False  # DeepSeek block-FP8 weights (weight_scale_inv beside each weight)
    mlp_layer_types: list[str] | None = None  # V3.2: "dense" | "sparse" per layer (else first_k_dense_replace)
    # V3.2's sparse attention (DSA): a lightning indexer picks each query's index_topk cached tokens
    index_topk: int = 0  # 0: no indexer (V2/V3)
    index_n_heads: int = 0
    index_head_dim: int = 0

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        scale = self.qk_head_dim ** -0.5
        rs = self.rope_scaling
        if rs and rs.get("type") == "yarn":
            m_all = rs.get("mscale_all_dim", 0)
            if m_all:
                m = yarn_mscale(rs["factor"], m_all)
                scale *= m * m
        return scale

    @property
    def sparse_attention(self) -> bool:
        return self.index_topk > 0

    def is_moe_layer(self, i: int) -> bool:
        """Layer ``i`` (``num_hidden_layers``: the MTP module's block) has routed experts."""
        if self.mlp_layer_types is not None and i < len(self.mlp_layer_types):
            return self.mlp_layer_types[i] == "sparse"
        return (bool(self.n_routed_experts) and i >= self.first_k_dense_replace
                and i % self.moe_layer_freq == 0)

    @classmethod
    def from_folder(cls, folder) -> "ModelArgs":
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise ModelError(f"{path}: no config.json (not an HF model folder)")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"{path}: unreadable JSON ({e})") from None
        if not isinstance(cfg, dict):
            raise ModelError(f"{path}: not a config object (a JSON {type(cfg).__name__})")
        return cls.from_dict(cfg, source=str(path))

    @classmethod
    def from_dict(cls, cfg: dict, source: str = "config.json") -> "ModelArgs":
        archs = cfg.get("architectures") or []
        model_type = cfg.get("model_type")
        arch = next((a for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            arch = _MODEL_TYPES.get(model_type)
        # architectures decides (a derivative may name its own model_type, e.g. Kimi-K2's kimi_k2)
        if arch is None:
            raise ModelError(f"{source}: unsupported architecture {archs or model_type!r}, model_type "
                             f"{model_type!r} (supported: {', '.join(ARCHITECTURES)}; model_type "
                             f"{', '.join(_MODEL_TYPES)})")
        v32 = arch == ARCHITECTURES[2]
        v3 = arch == ARCHITECTURES[0] or v32

        def need(key):
            if key not in cfg or cfg[key] is None:
                raise ModelError(f"{source}: missing field {key!r}")
            return cfg[key]

        # rope: DeepSeek writes rope_theta + rope_scaling{"type"}; transformers 5 writes rope_parameters
        rope = cfg.get("rope_parameters") or {}
        theta = float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0)
        scaling = cfg.get("rope_scaling") or None
        if scaling is None and rope.get("rope_type", "default") not in ("default", None):
            scaling = dict(rope)
        if scaling is not None:
            scaling = dict(scaling)
            kind = scaling.get("type") or scaling.get("rope_type")
            if kind in (None, "default"):
                scaling = None
            elif kind != "yarn":
                raise ModelError(f"{source}: rope_scaling type {kind!r} is not supported (only yarn)")
            else:
                scaling["type"] = "yarn"
                scaling.setdefault("original_max_position_embeddings", 4096)
                if scaling.get("factor") is None:
                    scaling["factor"] = cfg["max_position_embeddings"] / scaling["original_max_position_embeddings"]
        eos = cfg.get("eos_token_id")
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        scoring = cfg.get("scoring_func") or ("sigmoid" if v3 else "softmax")
        topk_method = cfg.get("topk_method") or ("noaux_tc" if v3 else "greedy")
        if scoring not in ("sigmoid", "softmax"):
            raise ModelError(f"{source}: scoring_func {scoring!r} is not supported")
        if topk_method not in ("noaux_tc", "greedy", "group_limited_greedy"):
            raise ModelError(f"{source}: topk_method {topk_method!r} is not supported")
        q = cfg.get("quantization_config") or {}
        fp8 = q.get("quant_method") == "fp8"
        if fp8 and list(q.get("weight_block_size") or [128, 128]) != [128, 128]:
            raise ModelError(f"{source}: FP8 weight_block_size {q.get('weight_block_size')} (only 128x128)")
        try:
            args = cls(
                arch=arch,
                vocab_size=int(need("vocab_size")),
                hidden_size=int(need("hidden_size")),
                intermediate_size=int(need("intermediate_size")),
                moe_intermediate_size=int(cfg.get("moe_intermediate_size") or 0),
                num_hidden_layers=int(need("num_hidden_layers")),
                num_attention_heads=int(need("num_attention_heads")),
                q_lora_rank=cfg.get("q_lora_rank") or None,
                kv_lora_rank=int(need("kv_lora_rank")),
                qk_nope_head_dim=int(need("qk_nope_head_dim")),
                qk_rope_head_dim=int(need("qk_rope_head_dim")),
                v_head_dim=int(need("v_head_dim")),
                n_routed_experts=cfg.get("n_routed_experts") or None,
                n_shared_experts=cfg.get("n_shared_experts") or None,
                num_experts_per_tok=int(cfg.get("num_experts_per_tok") or 0),
                first_k_dense_replace=int(cfg.get("first_k_dense_replace") or 0),
                moe_layer_freq=int(cfg.get("moe_layer_freq") or 1),
                n_group=int(cfg.get("n_group") or 1),
                topk_group=int(cfg.get("topk_group") or 1),
                routed_scaling_factor=float(cfg.get("routed_scaling_factor") or 1.0),
                norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
                scoring_func=scoring,
                topk_method=topk_method,
                rms_norm_eps=float(cfg.get("rms_norm_eps") or 1e-6),
                rope_theta=theta,
                rope_scaling=scaling,
                rope_interleave=v32 or bool(cfg.get("rope_interleave", True)),  # V3.2: always pairs
                max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_id=eos,
                fp8=fp8,
                **(_v32_fields(cfg, source) if v32 else {}),
            )
        except (TypeError, ValueError) as e:
            raise ModelError(f"{source}: bad field value ({e})") from None
        if args.n_routed_experts and args.n_routed_experts % args.n_group:
            raise ModelError(f"{source}: n_routed_experts {args.n_routed_experts} not divisible by n_group {args.n_group}")
        if args.mlp_layer_types is not None and len(args.mlp_layer_types) != args.num_hidden_layers:
            raise ModelError(f"{source}: mlp_layer_types has {len(args.mlp_layer_types)} entries for "
                             f"{args.num_hidden_layers} layers")
        if args.sparse_attention:
            if not args.q_lora_rank:
                raise ModelError(f"{source}: q_lora_rank is required by the indexer (index_topk)")
            if not 0 < args.qk_rope_head_dim <= args.index_head_dim or args.index_n_heads <= 0:
                raise ModelError(f"{source}: index_head_dim {args.index_head_dim} / index_n_heads "
                                 f"{args.index_n_heads} do not fit qk_rope_head_dim {args.qk_rope_head_dim}")
        return args


def _v32_fields(cfg: dict, source: str) -> dict:
    """DeepSeek-V3.2's own keys (transformers' defaults where absent); what the engine does not
    implement is refused here, by name."""
    n = cfg.get("num_hidden_layers")
    layer_types = cfg.get("layer_types")
    if layer_types is not None:
        other = sorted({t for t in layer_types if t != "indexed_attention"})
        if other:
            raise ModelError(f"{source}: layer_types {other} are not supported (only \"indexed_attention\")")
        if len(layer_types) != n:
            raise ModelError(f"{source}: layer_types has {len(layer_types)} entries for {n} layers")
    mlp = cfg.get("mlp_layer_types")
    if mlp is not None:
        other = sorted({t for t in mlp if t not in ("dense", "sparse")})
        if other:
            raise ModelError(f"{source}: mlp_layer_types {other} are not supported (\"dense\" | \"sparse\")")
        mlp = list(mlp)
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise ModelError(f"{source}: {key} is not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported (only silu)")
    if cfg.get("scoring_func", "sigmoid") != "sigmoid" or cfg.get("topk_method", "noaux_tc") != "noaux_tc":
        raise ModelError(f"{source}: deepseek_v32 with scoring_func/topk_method other than sigmoid/noaux_tc "
                         f"is not supported")
    topk = cfg.get("index_topk", 2048)
    if not isinstance(topk, int) or isinstance(topk, bool) or topk <= 0:
        raise ModelError(f"{source}: index_topk {topk!r} is not a positive integer")
    return dict(mlp_layer_types=mlp, index_topk=topk, index_n_heads=int(cfg.get("index_n_heads", 64)),
                index_head_dim=int(cfg.get("index_head_dim", 128)))


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
