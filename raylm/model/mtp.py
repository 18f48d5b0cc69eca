"""Multi-token prediction (MTP): extra depths that predict tokens further ahead.

DeepSeek-V3 technical report (DeepSeek-AI 2024, sec. 2.2), after Gloeckle et al. 2024 ("Better
& Faster Large Language Models via Multi-token Prediction"), but sequential rather than
parallel heads, so that every depth keeps the causal chain: module ``k`` (``k = 1..D``) at
position ``i`` combines the previous depth's hidden state ``h_i^{k-1}`` (``h^0``: the main
model's last block output) with the embedding of token ``i + k``,

    h'_i^k = W_k [RMSNorm(h_i^{k-1}); RMSNorm(Emb(t_{i+k}))]        (a 2d -> d projection)
    h^k    = TRM_k(h'^k)                                             (one Transformer block)
    P^k    = OutHead(RMSNorm_k(h^k))                                 (predicts t_{i+k+1})

with the main model's embedding and output matrix shared (a norm of its own per module, as
DeepSeek-V3's released MTP weights have). The loss is ``L_main + lambda / D * sum_k L_k``
(``ModelConfig.mtp_weight`` is lambda). At inference the modules are dropped, or draft tokens
that the main model verifies (``raylm.model.speculative``).

Packed rows: module ``k``'s block attends inside the documents of the row like the main
model's. Its target at ``i`` is token ``i + k + 1``, ignored unless it lies in the same
document: labels come shifted by one with -100 at every document's last token
(``raylm.data.loader.make_batch``), so ``mtp_labels`` ignores a target whenever one of
``labels[i..i+k]`` is -100. Position ``i`` reads the embedding of token ``i + k`` even past a
document end; only positions whose targets are ignored do, so no loss sees another document.
"""

from __future__ import annotations

import torch
from torch import nn

from raylm.model.config import ModelConfig
from raylm.model.kv_cache import LayerCache

IGNORE_INDEX = -100


def mtp_labels(labels: torch.Tensor, depth: int) -> torch.Tensor:
    """``(B, L)`` targets of MTP depth ``depth`` from next-token ``labels`` ``(B, L)``: token
    ``t + depth + 1`` at ``t`` (``labels[t + depth]``), -100 where the target is in another
    document or past the row."""
    B = labels.shape[0]

    def ahead(j: int) -> torch.Tensor:  # labels[:, t + j] at t, -100 past the row
        return torch.cat([labels[:, j:], labels.new_full((B, min(j, labels.shape[1])), IGNORE_INDEX)], dim=1)

    out = ahead(depth)
    for j in range(depth):
        out = out.masked_fill(ahead(j) == IGNORE_INDEX, IGNORE_INDEX)
    return out


def shift_embeddings(emb: torch.Tensor, depth: int) -> torch.Tensor:
    """``(B, L, d)``: the embedding of token ``t + depth`` at ``t``, zeros past the row."""
    B, L, d = emb.shape
    return torch.cat([emb[:, depth:], emb.new_zeros(B, min(depth, L), d)], dim=1)


class MTPModule(nn.Module):
    """One MTP depth: the two norms, the projection, ``block`` (a ``raylm.model.transformer.Block``
    of the main model's shape) and the output norm."""

    def __init__(self, cfg: ModelConfig, block: nn.Module) -> None:
        super().__init__()
        self.hidden_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.embed_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.proj = nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)
        self.block = block
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)

    def init_weights(self, std: float, out_std: float) -> None:
        for norm in (self.hidden_norm, self.embed_norm, self.norm):
            norm.reset_parameters()
        nn.init.normal_(self.proj.weight, std=std)
        self.block.init_weights(std, out_std)

    def forward(
        self,
        hidden: torch.Tensor,
        next_emb: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        position_ids: torch.Tensor | None = None,
        block_mask: object = None,
        cache: LayerCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h^k, RMSNorm_k(h^k))``, both ``(B, L, d)``, from ``h^{k-1}`` and the embeddings of
        the tokens ``k`` ahead (both ``(B, L, d)``). The output norm is applied here, inside the
        module's forward, so that FSDP2 has its weight gathered."""
        x = self.proj(torch.cat([self.hidden_norm(hidden), self.embed_norm(next_emb)], dim=-1))  # (B, L, 2d) -> (B, L, d)
        h = self.block(x, cos, sin, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, position_ids=position_ids,
                       block_mask=block_mask, cache=cache)
        return h, self.norm(h)
