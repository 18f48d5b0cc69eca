"""A Llama-style decoder-only Transformer (Touvron et al. 2023) for packed batches.

Pre-norm blocks (RMSNorm, Zhang & Sennrich 2019) of grouped-query attention with rotary
position embeddings (Su et al. 2021) and a SwiGLU MLP (Shazeer 2020); no biases. Packed rows
hold several documents: ``position_ids`` restart at every document and attention stays inside
it (``raylm.model.attention``), so a document gives the same logits wherever it is packed.

Decoding feeds new tokens with a ``KVCache`` (``raylm.model.kv_cache``); optional
multi-token-prediction depths (``ModelConfig.mtp_heads``, ``raylm.model.mtp``) add training
signal and draft tokens for self-speculative decoding.

Distribution lives elsewhere (this file never imports ``torch.distributed``): build on the meta
device, parallelise, then materialise, torchtitan style::

    with torch.device("meta"):
        model = Transformer(cfg)
    # fully_shard(block) for block in model.layers, then fully_shard(model)
    model.to_empty(device="cuda")
    model.init_weights()
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raylm.model.attention import attention, flash_available, flex_block_mask, packs_documents
from raylm.model.config import ModelConfig
from raylm.model.kv_cache import KVCache, LayerCache, cached_attention
from raylm.model.mtp import MTPModule, mtp_labels, shift_embeddings

IGNORE_INDEX = -100


def rope_tables(head_dim: int, max_seq_len: int, theta: float, device: torch.device | None = None):
    """float32 ``cos`` and ``sin`` of every (position, frequency) pair: ``(max_seq_len, head_dim / 2)``."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, L, H, D)`` by the angles of its positions, ``cos``/``sin`` ``(B, L, D / 2)``;
    the two halves of the head dimension form the rotated pairs (as in Llama on Hugging Face)."""
    cos, sin = cos[:, :, None], sin[:, :, None]  # (B, L, 1, D/2)
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, L, H, D/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.causal, self.backend, self.scale = cfg.causal, cfg.attention, cfg.attn_scale
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def init_weights(self, std: float, out_std: float) -> None:
        for w in (self.wq, self.wk, self.wv):
            nn.init.normal_(w.weight, std=std)
        nn.init.normal_(self.wo.weight, std=out_std)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        cu_seqlens: torch.Tensor | None,
        max_seqlen: int | None,
        position_ids: torch.Tensor | None,
        block_mask: object,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.wq(x).view(B, L, self.n_heads, self.head_dim)  # (B, L, H, D)
        k = self.wk(x).view(B, L, self.n_kv_heads, self.head_dim)  # (B, L, Hkv, D)
        v = self.wv(x).view(B, L, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            out = cached_attention(q, k, v, cache, backend=self.backend, scale=self.scale)
            return self.wo(out.reshape(B, L, -1))  # (B, L, H*D) -> (B, L, d_model)
        out = attention(
            q,
            k,
            v,
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
            position_ids=position_ids,
            causal=self.causal,
            backend=self.backend,
            block_mask=block_mask,
            scale=self.scale,
        )
        return self.wo(out.reshape(B, L, -1))  # (B, L, H*D) -> (B, L, d_model)


class MLP(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def init_weights(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.w1.weight, std=std)
        nn.init.normal_(self.w3.weight, std=std)
        nn.init.normal_(self.w2.weight, std=out_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """One pre-norm Transformer block: the unit of FSDP sharding and activation checkpointing."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attention = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def init_weights(self, std: float, out_std: float) -> None:
        self.attention_norm.reset_parameters()
        self.mlp_norm.reset_parameters()
        self.attention.init_weights(std, out_std)
        self.mlp.init_weights(std, out_std)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        position_ids: torch.Tensor | None = None,
        block_mask: object = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        h = self.attention_norm(x)
        x = x + self.attention(
            h,
            cos,
            sin,
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
            position_ids=position_ids,
            block_mask=block_mask,
            cache=cache,
        )
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        # Tied: the output projection reads tok_embeddings.weight in forward. Not a shared
        # Parameter, which to_empty() or load_state_dict(assign=True) would silently untie.
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # Multi-token prediction depths 1..mtp_heads (empty: no parameters, no state-dict keys).
        self.mtp = nn.ModuleList(MTPModule(cfg, Block(cfg)) for _ in range(cfg.mtp_heads))
        # Derived from the config, so not saved in checkpoints; recomputed by init_weights.
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    def reset_rope(self, device: torch.device | str | None = None) -> None:
        """Recompute the rotary tables on ``device``, e.g. after weights were loaded with
        ``load_state_dict(assign=True)`` into a model built on the meta device."""
        cfg = self.cfg
        self.rope_cos, self.rope_sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, device=device)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter and buffer in place, on whatever device they are (also
        after ``to_empty``): weights ~ N(0, init_std), the output projections of attention and
        MLP ~ N(0, init_std / sqrt(2 * n_layers)) (GPT-2, OLMo), norm weights 1."""
        cfg = self.cfg
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        nn.init.normal_(self.tok_embeddings.weight, std=cfg.init_std)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=cfg.init_std)
        # μP: hidden matrices' variance ~ 1/fan_in relative to the base width (raylm.model.mup)
        hidden_std = cfg.init_std / math.sqrt(cfg.width_mult)
        out_std = hidden_std / math.sqrt(2 * cfg.n_layers)
        for layer in self.layers:
            layer.init_weights(hidden_std, out_std)
        for module in self.mtp:
            module.init_weights(hidden_std, out_std)
        self.norm.reset_parameters()

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        labels: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mtp: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``(B, L, vocab_size)`` of ``input_ids`` ``(B, L)``, and the loss when
        ``labels`` are given (see ``loss``).

        ``position_ids`` ``(B, L)``: positions restarting at every document (default
        ``0..L-1`` in every row). ``cu_seqlens``/``max_seqlen``: the document boundaries of the
        flattened batch (see ``raylm.model.attention``); without them documents are read from
        ``position_ids``, and without those each row is one document. A batch of
        ``raylm.data.loader`` is passed as ``model(**batch)`` minus its ``seq_id``.

        ``cache``: decode ``input_ids`` as the next tokens of the rows cached so far (one
        document per row, positions from ``cache.length``); the cache then holds them too.
        ``mtp=True``: ``(logits, [logits of MTP depth k for k = 1..mtp_heads])``, each
        ``(B, L, vocab_size)`` (depth ``k`` at ``t`` predicts token ``t + k + 1``; see
        ``mtp_loss_sums``)."""
        cos, sin, layout = self._layout(input_ids, position_ids, cu_seqlens, max_seqlen, cache)
        emb = self.embed(input_ids)
        h = self._blocks(emb, cos, sin, layout, cache)
        logits = self.readout(self.norm(h))
        if mtp:
            if labels is not None or cache is not None:
                raise ValueError("mtp=True returns the MTP logits for mtp_loss_sums; pass no labels or cache")
            drafts = []
            for k, module in enumerate(self.mtp, start=1):
                h, out = module(h, shift_embeddings(emb, k), cos, sin, **layout)
                drafts.append(self.readout(out))
            return logits, drafts
        if labels is None:
            return logits
        return logits, self.loss(logits, labels)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``(B, L, d_model)`` (times μP's ``input_mult``)."""
        h = self.tok_embeddings(input_ids)
        return h * self.cfg.input_mult if self.cfg.input_mult != 1.0 else h

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, vocab_size)`` of normalised hidden states (the shared output head)."""
        out_weight = self.tok_embeddings.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(h, out_weight)  # (B, L, vocab_size)
        logit_mult = self.cfg.output_mult / self.cfg.width_mult  # μP: 1/width readout
        return logits * logit_mult if logit_mult != 1.0 else logits

    def hidden(self, input_ids: torch.Tensor, *, cache: KVCache | None = None) -> torch.Tensor:
        """The last block's output ``(B, L, d_model)`` (before the final norm) of one document
        per row; with ``cache``, of the next tokens (see ``forward``). ``readout(norm(h))``
        gives the logits; MTP depth 1 reads ``h`` (``mtp_step``)."""
        cos, sin, layout = self._layout(input_ids, None, None, None, cache)
        return self._blocks(self.embed(input_ids), cos, sin, layout, cache)

    def mtp_step(self, depth: int, hidden: torch.Tensor, next_ids: torch.Tensor,
                 cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """MTP depth ``depth`` (1-based) over the next positions of its own one-layer ``cache``:
        ``(h^depth, logits)`` ``(B, T, ...)`` from ``h^{depth-1}`` ``(B, T, d_model)`` and the
        ids of the tokens ``depth`` ahead of those positions, ``next_ids`` ``(B, T)``."""
        module = self.mtp[depth - 1]
        cos, sin, _ = self._layout(next_ids, None, None, None, cache)
        h, out = module(hidden, self.embed(next_ids), cos, sin, cache=cache.layer(0, next_ids.shape[1]))
        cache.advance(next_ids.shape[1])
        return h, self.readout(out)

    def _layout(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                max_seqlen: int | None, cache: KVCache | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The rotary tables ``(B or 1, L, D/2)`` of the tokens' positions and the document
        layout every block takes (boundaries, FlexAttention's block mask)."""
        B, L = input_ids.shape
        start = 0
        if cache is not None:
            if cu_seqlens is not None or position_ids is not None:
                raise ValueError("a KV cache holds one document per row: pass no cu_seqlens or position_ids")
            if not self.cfg.causal:
                raise ValueError("a KV cache needs a causal model (model.causal: true)")
            start = cache.length
        if start + L > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {start + L} exceeds max_seq_len={self.cfg.max_seq_len}")
        positions = (
            position_ids if position_ids is not None else torch.arange(start, start + L, device=input_ids.device)[None]
        )
        block_mask = None
        if cache is None and self._uses_flex(input_ids, cu_seqlens, position_ids):  # one BlockMask for all layers
            block_mask = flex_block_mask(
                B=B,
                L=L,
                causal=self.cfg.causal,
                device=input_ids.device,
                cu_seqlens=cu_seqlens,
                position_ids=position_ids,
            )
        layout = {"cu_seqlens": cu_seqlens, "max_seqlen": max_seqlen, "position_ids": position_ids,
                  "block_mask": block_mask}
        return self.rope_cos[positions], self.rope_sin[positions], layout

    def _blocks(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: dict,
                cache: KVCache | None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, **layout, **({"cache": cache.layer(i, h.shape[1])} if cache is not None else {}))
        if cache is not None:
            cache.advance(h.shape[1])
        return h

    def _uses_flex(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None,
                   position_ids: torch.Tensor | None) -> bool:
        """Whether the blocks run FlexAttention: asked for, or "auto" for packed rows on CUDA
        without flash-attn when the blocks are compiled (``nn.Module.compile``), where flex's
        fused block-sparse kernels beat SDPA with a dense mask (see ``resolve_backend``)."""
        if self.cfg.attention != "auto":
            return self.cfg.attention == "flex"
        compiled = getattr(self.layers[0], "_compiled_call_impl", None) is not None
        return (input_ids.is_cuda and compiled and not flash_available()
                and packs_documents(cu_seqlens, position_ids, input_ids.shape[0]))

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy (fp32) over the tokens whose label is not -100, plus the
        z-loss; ``labels`` are already shifted (``labels[:, t]`` is the token after ``t``).
        The trainer divides by the global batch's token count (``raylm.train.loop``)."""
        logits = logits.float().flatten(0, 1)  # (B*L, V)
        labels = labels.flatten()  # (B*L,)
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum",
                               label_smoothing=self.cfg.label_smoothing)
        if self.cfg.z_loss:
            z = torch.logsumexp(logits, dim=-1).square()
            loss = loss + self.cfg.z_loss * (z * (labels != IGNORE_INDEX)).sum()
        return loss

    def mtp_loss_sums(self, mtp_logits: list[torch.Tensor], labels: torch.Tensor) -> list[torch.Tensor]:
        """``loss_sum`` of every MTP depth (``forward(..., mtp=True)``) against its targets,
        ``mtp_labels(labels, k)``: the next-token ``labels`` moved ``k`` ahead, with every
        target in another document ignored."""
        return [self.loss_sum(logits, mtp_labels(labels, k)) for k, logits in enumerate(mtp_logits, start=1)]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``loss_sum`` over the number of labelled tokens; a batch without any label gives 0, not NaN."""
        return self.loss_sum(logits, labels) / (labels != IGNORE_INDEX).sum().clamp(min=1)
