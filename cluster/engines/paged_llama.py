"""A transformers Llama run over the project's paged KV cache: the model's own
modules (embeddings, projections, norms, rotary embedding, MLP, head) with attention
over `KVPool` slots, so one step batches prefill chunks and decode tokens of many
requests (the tokens laid end to end, as vLLM does) and greedy-picks each request's
next token. It reads a folder written by `pdlab model make` (or any Llama checkpoint)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cluster.engines.kvpool import KVPool


@dataclass
class Chunk:
    """New tokens of one request at positions [start, start + len(ids)), its KV before
    `start` in the pool; `sample` asks for the next token after the last one."""
    request: int
    start: int
    ids: list[int]
    sample: bool = True


class PagedLlama:
    def __init__(self, path: str) -> None:
        from transformers import LlamaForCausalLM

        self.model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        config = self.model.config
        self.layers, self.heads = config.num_hidden_layers, config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.vocab_size = config.vocab_size

    def pool(self, blocks: int, block_size: int) -> KVPool:
        return KVPool(self.layers, self.kv_heads, self.head_dim, blocks, block_size)

    @torch.inference_mode()
    def step(self, chunks: list[Chunk], pool: KVPool) -> dict[int, int]:
        """Run one iteration; returns the next token of each chunk that samples."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        model = self.model.model
        ids = torch.tensor([i for c in chunks for i in c.ids])
        positions = torch.cat([torch.arange(c.start, c.start + len(c.ids)) for c in chunks])
        for c in chunks:
            pool.ensure(c.request, c.start + len(c.ids))
        new_slots = torch.cat([pool.slots(c.request, c.start, c.start + len(c.ids)) for c in chunks])
        all_slots = [pool.slots(c.request, 0, c.start + len(c.ids)) for c in chunks]
        hidden = model.embed_tokens(ids)
        cos, sin = model.rotary_emb(hidden, positions)
        for index, layer in enumerate(model.layers):
            attention = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attention.q_proj(x).view(len(ids), self.heads, self.head_dim)
            k = attention.k_proj(x).view(len(ids), self.kv_heads, self.head_dim)
            v = attention.v_proj(x).view(len(ids), self.kv_heads, self.head_dim)
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
            pool.keys[index, new_slots], pool.values[index, new_slots] = k, v
            out = self._attend(q, chunks, all_slots, pool.keys[index], pool.values[index])
            hidden = hidden + attention.o_proj(out)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        ends = torch.tensor([c.start + len(c.ids) for c in chunks]) - torch.tensor([c.start for c in chunks])
        last = torch.cumsum(ends, 0) - 1
        logits = self.model.lm_head(model.norm(hidden[last]))
        picked = logits.argmax(-1).tolist()
        return {c.request: token for c, token in zip(chunks, picked) if c.sample}

    def _attend(self, q: torch.Tensor, chunks: list[Chunk], all_slots: list[torch.Tensor], keys: torch.Tensor,
                values: torch.Tensor) -> torch.Tensor:
        outputs, offset = [], 0
        for chunk, slots in zip(chunks, all_slots):
            n = len(chunk.ids)
            query = q[offset:offset + n].transpose(0, 1)
            key, value = keys[slots].transpose(0, 1), values[slots].transpose(0, 1)
            mask = torch.arange(len(slots))[None, :] <= torch.arange(chunk.start, chunk.start + n)[:, None]
            out = F.scaled_dot_product_attention(query[None], key[None], value[None], attn_mask=mask,
                                                 enable_gqa=True)
            outputs.append(out[0].transpose(0, 1).reshape(n, -1))
            offset += n
        return torch.cat(outputs)
