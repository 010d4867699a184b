"""The committed demo models: a genuine DeepSeek-V3 checkpoint (with its MTP module) that
transformers loads and our engine matches, a GGUF that llama.cpp loads, and a manifest that
tells the truth about the files."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from app import demo
from training.render import chat

MAX_BYTES = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def prompt_ids():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(demo.reasoner_path() / "tokenizer.json"))
    src = (demo.sample_source() / "calc.py").read_text()
    text = chat(f"review calc.py\n\ncalc.py\n```python\n{src}```") + "calc.py has 2 functions."
    return tok.encode(text).ids


def test_the_manifest_matches_the_files_and_they_fit_the_size_budget():
    m = demo.manifest()
    total = 0
    for rel, info in m["files"].items():
        path = demo.demo_dir() / rel
        assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"], rel
        assert path.stat().st_size == info["bytes"]
        total += info["bytes"]
    assert {"reasoner/model.safetensors", "reasoner/config.json", "reasoner/tokenizer.json", "coder.gguf"} <= set(m["files"])
    assert total == m["total_bytes"] <= MAX_BYTES
    assert m["data_seed"] is not None
    assert m["training"]["reasoner"]["steps"] > 0 and m["training"]["coder"]["steps"] > 0


def test_the_reasoner_is_an_ordinary_deepseek_v3_checkpoint_with_every_v3_feature():
    cfg = json.loads((demo.reasoner_path() / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["architectures"] == ["DeepseekV3ForCausalLM"]
    assert cfg["q_lora_rank"] and cfg["kv_lora_rank"] and cfg["qk_rope_head_dim"]  # MLA, q-LoRA, decoupled RoPE
    assert cfg["n_routed_experts"] > cfg["num_experts_per_tok"] >= 2 and cfg["n_shared_experts"] == 1
    assert cfg["n_group"] > 1 and 1 <= cfg["topk_group"] < cfg["n_group"]  # grouped routing
    assert 1 <= cfg["first_k_dense_replace"] < cfg["num_hidden_layers"]  # the first layer dense, MoE after
    assert cfg["num_nextn_predict_layers"] == 1
    tcfg = json.loads((demo.reasoner_path() / "tokenizer_config.json").read_text())
    assert "</think>" in tcfg["chat_template"]  # R1's convention


def test_the_mtp_module_is_stored_where_deepseek_v3_stores_it():
    from safetensors import safe_open

    cfg = json.loads((demo.reasoner_path() / "config.json").read_text())
    L = cfg["num_hidden_layers"]
    with safe_open(str(demo.reasoner_path() / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        prefix = f"model.layers.{L}."
        for own in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                    "shared_head.head.weight", "embed_tokens.weight", "self_attn.kv_a_proj_with_mqa.weight",
                    "mlp.gate.weight", "mlp.gate.e_score_correction_bias", "mlp.shared_experts.down_proj.weight",
                    "mlp.experts.0.gate_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"):
            assert prefix + own in names, own
        assert f.get_tensor(prefix + "eh_proj.weight").shape == (cfg["hidden_size"], 2 * cfg["hidden_size"])
        assert not any(n.startswith(f"model.layers.{L + 1}.") for n in names)
        # the routing bias was trained (V3's auxiliary-loss-free balancing), not left at zero
        first_moe = cfg["first_k_dense_replace"]
        assert f"model.layers.{first_moe - 1}.mlp.gate_proj.weight" in names  # the dense layers come first
        assert f.get_tensor(f"model.layers.{first_moe}.mlp.gate.e_score_correction_bias").abs().sum() > 0


def test_transformers_and_our_engine_give_the_same_logits_in_fp32(prompt_ids):
    from transformers import AutoModelForCausalLM

    from local_engine import Engine

    ids = torch.tensor([prompt_ids])
    ref = AutoModelForCausalLM.from_pretrained(str(demo.reasoner_path()), dtype=torch.float32)
    assert type(ref).__name__ == "DeepseekV3ForCausalLM"
    with torch.no_grad():
        want = ref(ids).logits[0].float()
    engine = Engine.load(str(demo.reasoner_path()), dtype="float32", max_seq_len=1024)
    with torch.no_grad():
        got = engine.forward(ids)[0].float()
    assert (got - want).abs().max().item() <= 1e-4


def test_the_coder_gguf_loads_in_llama_cpp_and_tokenizes_like_the_shared_tokenizer(prompt_ids):
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    llm = Llama(str(demo.coder_path()), n_ctx=1024, n_threads=2, verbose=False)
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.metadata["tokenizer.ggml.model"] == "gpt2"
    assert "<｜Assistant｜>" in llm.metadata["tokenizer.chat_template"]
    tok = Tokenizer.from_file(str(demo.reasoner_path() / "tokenizer.json"))
    text = tok.decode(prompt_ids, skip_special_tokens=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt_ids
    assert llm.token_eos() == tok.token_to_id("<｜end▁of▁sentence｜>")
    llm.close()


def test_the_committed_reasoner_reads_training_style_modules_back():
    """The eval's reading-back measure (teacher-forced): the committed reasoner copies modules
    written the way it was trained almost token for token (99.4% of trace tokens on 30; held-out
    ones 86.5%, the README's explanation of its held-out figures)."""
    import training.eval as ev

    old = ev.STYLE
    try:
        ev.STYLE = "train"
        train = ev.eval_copying(demo.reasoner_path(), 8, 7, log=lambda *_: None)
        ev.STYLE = "heldout"
        held = ev.eval_copying(demo.reasoner_path(), 4, 7, log=lambda *_: None)
    finally:
        ev.STYLE = old
    assert (train["copy_n"], held["copy_n"]) == (8, 4)
    assert train["copy_token_acc"] > 0.98
    assert held["copy_token_acc"] < train["copy_token_acc"]   # what the README says of held-out modules


def test_the_tokenizer_step_copies_the_committed_tokenizer_unless_asked_for_a_new_one(tmp_path):
    """Both committed models read one tokenizer, so retraining one of them alone keeps them in step."""
    from training.train import main

    assert main(["tokenizer", "--out", str(tmp_path / "a")]) == 0
    committed = (demo.reasoner_path() / "tokenizer.json").read_bytes()
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == committed
    assert main(["tokenizer", "--out", str(tmp_path / "b"), "--new-tokenizer"]) == 0
    fresh = json.loads((tmp_path / "b" / "tokenizer.json").read_text())
    assert len(fresh["model"]["vocab"]) == len(json.loads(committed)["model"]["vocab"])


def test_packaging_a_coder_only_run_keeps_the_committed_reasoner_and_its_manifest_entry(tmp_path):
    import shutil

    from training.package import package

    dest = tmp_path / "demo"
    shutil.copytree(demo.demo_dir(), dest)
    before = json.loads((dest / "manifest.json").read_text())
    run = tmp_path / "run" / "coder"
    (run / "hf").mkdir(parents=True)
    (run / "coder.gguf").write_bytes(b"GGUF" + bytes(60))  # a new coder file: its hash must be what is listed
    (run / "hf" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (run / "train_log.jsonl").write_text(
        json.dumps({"event": "start", "params": 10, "hp": {"batch": 2}, "threads": 1, "minutes": 1.0, "seed": 3}) + "\n"
        + json.dumps({"step": 10, "loss": 1.0}) + "\n")
    (run / "checkpoint.json").write_text(json.dumps({"step": 10, "seconds": 60.0, "ema_loss": 1.0}))

    m = package(tmp_path / "run", None, dest, roles=("coder",))
    assert m["training"]["reasoner"] == before["training"]["reasoner"]
    assert m["training"]["coder"]["steps"] == 10 and m["training"]["coder"]["examples_seen"] == 20
    assert m["training"]["coder"]["config"]["hidden_size"] == 8 and m["data_seed"] == 3
    assert m["files"]["coder.gguf"]["sha256"] == hashlib.sha256(b"GGUF" + bytes(60)).hexdigest()
    assert m["files"]["reasoner/model.safetensors"] == before["files"]["reasoner/model.safetensors"]
    assert m["total_bytes"] == sum(f["bytes"] for f in m["files"].values())

    (dest / "manifest.json").unlink()  # nothing to keep the reasoner's entry from: a clear error, not a guess
    with pytest.raises(SystemExit, match="manifest.json: no reasoner entry to keep"):
        package(tmp_path / "run", None, dest, roles=("coder",))


README_ROWS = {  # the README's table of what the demo models can do: its first column -> the manifest's figure
    "reasoner: right function and bug kind, thinking": "reasoner_found",
    "its plan gives the exact change (its own \"… to `the line as it should be`\")": "reasoner_exact_change",
    "the same asked with the design template (`duet run`, `/plan`)": "reasoner_found_design",
    "the same with `exact_quotes` but not its names held (`known_names` off)": "reasoner_found_lines",
    "the same reasoner decoded without `exact_quotes`": "reasoner_found_free",
    "reasoner: same, thinking suppressed (empty `<think>`)": "reasoner_nothink_found",
    "reasoner after its failing tests (`test_first`; the design template, as `duet run` asks): right function and "
    "bug kind": "reasoner_found_tests",
    "its plan gives the exact change": "reasoner_exact_change_tests",
    "coder given a correct plan: tests pass": "coder_given_plan",
    "the same in Duet's own loop, as `duet run` hands it a plan (blocks checked, applied and tested; a rejected "
    "block or failing round asked again, sampled, within its rounds)": "coder_given_plan_duet",
    "the same coder sampled without the edit grammar": "coder_given_plan_free",
    "end to end (reasoner → coder → apply → test; no tests before the plan)": "end_to_end",
    "end to end through `duet run --apply --test --replans 0` (tests before the plan; one plan)": "duet_run_passed",
    "the same with `--replans 4`, the demo's default (the tests choose among its plans)": "duet_run_replans_passed",
}


def test_the_readme_table_says_what_the_manifest_measured():
    """Each figure of the README's table of the demo models is the manifest's (the eval's
    output), column by column: the sample project, training style, held out."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = {}
    for line in readme.split("\n"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
        if cells and cells[0] in README_ROWS:
            table[cells[0]] = cells[1:4]
    assert set(table) == set(README_ROWS)
    m = json.loads((demo.demo_dir() / "manifest.json").read_text(encoding="utf-8"))
    for label, key in README_ROWS.items():
        for cell, section in zip(table[label], ("eval_sample_project", "eval_train_style", "eval")):
            said = int(re.match(r"(\d+)%", cell).group(1))
            assert said == round(m[section][key] * 100), (label, section, cell, m[section][key])


def test_the_demo_re_plans_as_often_as_its_eval_measured():
    """`duet --demo run` re-plans as many times as the eval's `--replans` row was measured with
    (the README's table says what the demo's default gets), and `--replans 0` is the other row."""
    from app.config import demo_config

    m = demo.manifest()
    assert demo_config().workspace.replans > 0
    for section in ("eval_sample_project", "eval_train_style", "eval"):
        assert m[section]["duet_run_replans_max"] == demo_config().workspace.replans, section


def test_a_saved_reasoner_loads_back_into_training_whole_mtp_module_included(tmp_path):
    """training.models.Reasoner.load (train.py --init, a second schedule): every tensor save wrote,
    the MTP block's experts fused again, comes back as it was."""
    import torch

    from training import models

    config = models.use_training_attention(models.reasoner_config(64, hidden_size=32, intermediate_size=64,
                                                                  moe_intermediate_size=16, num_hidden_layers=2,
                                                                  q_lora_rank=24, kv_lora_rank=16))
    torch.manual_seed(0)
    saved = models.Reasoner(config)
    with torch.no_grad():   # nothing left at its initial value (norms start at 1, the routers' biases at 0)
        for t in saved.state_dict().values():
            t.add_(torch.randn_like(t) * 0.1)
    saved.save(tmp_path)
    loaded = models.Reasoner(config)
    loaded.load(tmp_path)
    want, got = saved.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
