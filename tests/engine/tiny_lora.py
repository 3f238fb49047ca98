"""Build a LoRA adapter, in PEFT's format (adapter_config.json + adapter_model.safetensors), for a tiny model built by
tests/engine/tiny_model.py: rank 8 on every layer's q_proj and v_proj, random A and B (PEFT starts B at zero, which
would answer exactly as the base model), so that a request naming the adapter is visibly answered by it.

Run it with the ENGINE virtual environment (torch and safetensors come with vLLM):

    ENGINE_VENV/bin/python tests/engine/tiny_lora.py MODEL_DIR DEST [--seed N]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RANK, ALPHA, TARGETS = 8, 16, ("q_proj", "v_proj")


def build_tiny_lora(model: Path, dest: Path, *, seed: int = 0) -> Path:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    tensors = {}
    with safe_open(str(next(model.glob("*.safetensors"))), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open has no iterator)
            module = key.removesuffix(".weight")
            if not key.endswith(".weight") or module.rsplit(".", 1)[-1] not in TARGETS:
                continue
            out_features, in_features = weights.get_slice(key).get_shape()
            prefix = f"base_model.model.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, in_features) * 0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, RANK) * 0.5
    if not tensors:
        raise SystemExit(f"no {' or '.join(TARGETS)} weights in {model}")
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / "adapter_model.safetensors"))
    (dest / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(model), "r": RANK,
        "lora_alpha": ALPHA, "lora_dropout": 0.0, "target_modules": list(TARGETS), "bias": "none",
        "fan_in_fan_out": False, "modules_to_save": None, "use_rslora": False, "use_dora": False}, indent=1))
    return dest


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    print(build_tiny_lora(options.model, options.dest, seed=options.seed))
