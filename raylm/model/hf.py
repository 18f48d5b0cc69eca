"""raylm's Transformer as Hugging Face's ``LlamaForCausalLM``: the config and the weight names.

Both are the Llama architecture (pre-norm RMSNorm, rotary embeddings over the two halves of
the head dimension, SwiGLU, grouped-query attention, no biases), so a raylm model is a Llama
model under other parameter names and nothing is permuted: ``wq``/``wk`` keep their layout
because ``apply_rope`` pairs dimension ``i`` with ``i + head_dim / 2`` as Hugging Face's
``rotate_half`` does. ``tests/model/test_hf_llama.py`` checks that the logits agree, on plain
rows and on packed ones.

What Llama cannot express is refused (``llama_config`` raises): μP's multipliers and attention
scale, and bidirectional (encoder) attention. The embedding has no ``padding_idx`` on either
side (Hugging Face would zero that row's gradient). One module, used by the HF parity test and
by the benchmarks that train or time Hugging Face's model next to ours
(``benchmarks/hf_parity.py``, ``benchmarks/train_mfu.py``); ``transformers`` is imported on
first use and is a ``dev``/``bench`` extra, not a dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from raylm.model.config import ModelConfig

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM

    from raylm.model.transformer import Transformer

HFAttention = Literal["sdpa", "eager"]

# raylm's name inside a block -> Hugging Face's, under ``layers.{i}.`` / ``model.layers.{i}.``
_BLOCK_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w3.weight": "mlp.up_proj.weight",
    "mlp.w2.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def llama_config(cfg: ModelConfig, attn_implementation: HFAttention = "sdpa") -> LlamaConfig:
    """The ``LlamaConfig`` of the same shape as ``cfg``; ``ValueError`` for what Llama lacks."""
    from transformers import LlamaConfig

    if cfg.parametrization != "sp" or cfg.input_mult != 1.0 or cfg.output_mult != 1.0:
        raise ValueError("Hugging Face Llama has no μP multipliers or attention scale: "
                         "parametrization sp with input_mult = output_mult = 1 only")
    if not cfg.causal:
        raise ValueError("Hugging Face LlamaForCausalLM is causal: model.causal must be true")
    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std,
        attention_bias=False, mlp_bias=False, hidden_act="silu", pad_token_id=None,
        use_cache=False, attn_implementation=attn_implementation,
    )


def llama_model(cfg: ModelConfig, attn_implementation: HFAttention = "sdpa") -> LlamaForCausalLM:
    """A fresh ``LlamaForCausalLM`` of ``cfg``'s shape with Hugging Face's own initialisation
    (every matrix ~ N(0, ``init_std``), norms 1), on the default device, fp32."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(llama_config(cfg, attn_implementation))


def llama_name(name: str) -> str:
    """Hugging Face Llama's name of raylm parameter ``name`` (``KeyError`` for none)."""
    if name.startswith("layers."):
        _, index, rest = name.split(".", 2)
        return f"model.layers.{index}.{_BLOCK_NAMES[rest]}"
    return _TOP_NAMES[name]


def llama_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """``model``'s weights under Hugging Face Llama's names (the tensors themselves, not
    copies). A tied model's one matrix appears as both ``model.embed_tokens.weight`` and
    ``lm_head.weight``, as in Hugging Face's own state dict."""
    out = {llama_name(name): tensor for name, tensor in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def to_llama(model: Transformer, attn_implementation: HFAttention = "sdpa") -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` holding a copy of ``model``'s weights (every key, strictly)."""
    hf = llama_model(model.cfg, attn_implementation)
    hf.load_state_dict(llama_state_dict(model), strict=True)
    return hf.to(next(model.parameters()).device)
