"""Small models made locally: a Llama-shaped transformers checkpoint with seeded
random weights (config and safetensors, no tokenizer), from a model spec in
`configs/models/`, for real engines on machines without a model hub."""
from __future__ import annotations

from pathlib import Path

from cluster.hardware.specs import ModelSpec, load_model

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def make_model(folder: str | Path, model: str = "tiny-llama", seed: int = 0, max_len: int = 4096) -> Path:
    """Write the model named (or the spec file given) with random weights to `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec: ModelSpec = load_model(model)
    config = LlamaConfig(hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                         num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                         num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim, vocab_size=spec.vocab_size,
                         max_position_embeddings=max_len, tie_word_embeddings=False,
                         torch_dtype=TORCH_DTYPES[spec.dtype])
    torch.manual_seed(seed)
    weights = LlamaForCausalLM(config).to(getattr(torch, TORCH_DTYPES[spec.dtype]))
    folder = Path(folder)
    weights.save_pretrained(folder)
    return folder
