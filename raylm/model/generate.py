"""Decoding with a trained model on its KV cache: greedy, or sampling with temperature, top-k
and top-p.

Top-p (nucleus) sampling follows Holtzman et al. 2020 ("The Curious Case of Neural Text
Degeneration"): sample from the smallest set of most likely tokens whose probabilities add up
to at least ``p``, renormalised. The order is that of common practice: temperature first, then
top-k, then top-p. Temperature 0 is greedy (argmax), which needs no random numbers.

``generate`` works on token ids and on one prompt (a batch of one row). It takes the model
module itself (unwrap DDP first; an FSDP2 module works as is when every rank calls it with
the same arguments, since its forward gathers the shards), runs under ``torch.no_grad`` in
eval mode and puts back the mode it found, and draws from its own seeded generator, so a
training worker can call it between steps without touching the training RNG streams. The
same seed gives the same tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch

from raylm.config import ConfigError
from raylm.data.tokenizer import EOS_ID
from raylm.model import Transformer
from raylm.model.kv_cache import KVCache

Stop = Literal["eos", "max_new_tokens", "max_seq_len"]


@dataclasses.dataclass(kw_only=True, slots=True)
class SamplingConfig:
    max_new_tokens: int = 128
    """Most tokens generated (fewer when the model's ``max_seq_len`` is reached first)."""
    temperature: float = 0.0
    """Softmax temperature; 0: greedy decoding."""
    top_k: int = 0
    """Sample among the ``top_k`` most likely tokens only; 0: all."""
    top_p: float = 1.0
    """Nucleus: sample among the most likely tokens whose probabilities sum to ``top_p``; 1: all."""
    seed: int = 0
    """Seed of the sampling generator."""
    eos_id: int = EOS_ID
    """Generation stops at this token (not returned)."""

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: {self.max_new_tokens} must be at least 1")
        if self.temperature < 0:
            raise ConfigError(f"temperature: {self.temperature} must not be negative (0 is greedy)")
        if self.top_k < 0:
            raise ConfigError(f"top_k: {self.top_k} must not be negative (0 is off)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: {self.top_p} must be in (0, 1]")


@dataclasses.dataclass(kw_only=True, slots=True)
class Generation:
    """What one prompt generated, and how."""

    tokens: list[int]
    """The new tokens, without the final eos."""
    stop: Stop
    """Why generation ended."""
    forwards: int
    """Forward passes of the main model, the prompt's included."""
    drafted: int = 0
    """Speculative decoding: draft tokens proposed by the MTP heads."""
    accepted: int = 0
    """Speculative decoding: draft tokens the main model confirmed."""

    @property
    def produced(self) -> int:
        """Tokens the forwards produced: the new tokens and the eos that ended them."""
        return len(self.tokens) + (self.stop == "eos")

    @property
    def tokens_per_forward(self) -> float:
        return self.produced / self.forwards

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """``logits`` ``(..., V)`` with every token outside the top ``top_k`` and outside the
    nucleus of mass ``top_p`` set to ``-inf`` (ties with the k-th token stay); the most likely
    token always stays."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= top_p  # the first token has 0 before it: always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> int:
    """The next token from the last position's ``logits`` ``(V,)``."""
    if cfg.temperature == 0:
        return int(logits.argmax())
    probs = filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p).softmax(dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def budget(model: Transformer, prompt: Sequence[int], max_new_tokens: int) -> tuple[int, Stop]:
    """How many tokens may follow ``prompt`` and what stops them: ``max_new_tokens`` or the
    model's ``max_seq_len`` (prompt and new tokens together)."""
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token")
    room = model.cfg.max_seq_len - len(prompt)
    if room < 1:
        raise ValueError(f"the prompt has {len(prompt)} tokens; the model's max_seq_len is {model.cfg.max_seq_len}")
    return (max_new_tokens, "max_new_tokens") if max_new_tokens <= room else (room, "max_seq_len")


def model_device(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@torch.no_grad()
def generate(model: Transformer, prompt: Sequence[int], cfg: SamplingConfig | None = None) -> Generation:
    """Continue ``prompt`` (token ids) with ``model``: one prefill forward of the prompt, then
    one forward per new token on the KV cache, until ``cfg.eos_id`` or the length budget."""
    cfg = cfg or SamplingConfig()
    cfg.validate()
    n_max, limit = budget(model, prompt, cfg.max_new_tokens)
    device, dtype = model_device(model)
    generator = None
    if cfg.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    try:
        cache = KVCache.for_model(model.cfg, 1, len(prompt) + n_max, device=device, dtype=dtype)
        logits = model(torch.tensor([list(prompt)], device=device), cache=cache)
        forwards, tokens = 1, []
        while True:
            token = next_token(logits[0, -1], cfg, generator)
            if token == cfg.eos_id:
                return Generation(tokens=tokens, stop="eos", forwards=forwards)
            tokens.append(token)
            if len(tokens) == n_max:
                return Generation(tokens=tokens, stop=limit, forwards=forwards)
            logits = model(torch.tensor([[token]], device=device), cache=cache)
            forwards += 1
    finally:
        model.train(was_training)
