"""Self-speculative greedy decoding: the model's multi-token-prediction heads draft, the main
model verifies.

Speculative decoding (Leviathan et al. 2023; Chen et al. 2023) lets a cheap drafter propose
``n`` tokens that the main model checks in one forward; for greedy decoding the rule is exact:
keep the drafts up to the first one that differs from the main model's argmax, then take the
main model's own token there, so the output is token for token plain greedy decoding's, and
each main forward yields ``1 + accepted`` tokens. The drafter here is the model itself: its
MTP modules (``raylm.model.mtp``, DeepSeek-V3 sec. 2.2, whose report measured 85-90%
acceptance of the second token), as in Gloeckle et al. 2024's self-speculative decoding.

One round, with tokens ``x_0..x_T`` known (``x_T`` is the main model's newest token, not yet
fed to it, so its KV cache holds positions ``0..T-1`` and ``h^0`` of each):

1. draft: MTP depth 1 at position ``T-1`` reads ``h^0_{T-1}`` and ``x_T`` and predicts
   ``x_{T+1}``; depth ``k`` reads depth ``k-1``'s state and the draft ``x_{T+k-1}`` and
   predicts ``x_{T+k}``;
2. verify: one main forward of ``[x_T, draft_1..draft_n]`` at positions ``T..T+n``, on the
   KV cache; ``a`` drafts match the argmax; the cache is rolled back to ``T + a + 1``
   positions, and ``draft_1..draft_a`` plus the main model's token after them are new.

Every MTP depth keeps a KV cache of its own (its block attends to all earlier positions, as
in training). Depth ``k`` at position ``i`` reads tokens up to ``x_{i+k}``, so only its
positions ``i <= T - k`` are final after a round (later ones used drafts) and the cache is
rolled back to them; the next round restarts every depth at the smallest such position and
recomputes the few positions in between. Greedy only, one prompt (batch of one row), the
model module itself in one process (it calls the model's parts, not its forward, so not an
FSDP2-sharded model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from raylm.data.tokenizer import EOS_ID
from raylm.model import Transformer
from raylm.model.generate import Generation, budget, model_device
from raylm.model.kv_cache import KVCache


def _draft(model: Transformer, known: list[int], hidden0: torch.Tensor, caches: list[KVCache]) -> list[int]:
    """Drafts of the tokens after ``known`` (``x_0..x_T``), one per MTP depth in ``caches``."""
    if not caches:
        return []
    T = len(known) - 1
    start = min(c.length for c in caches)  # the first position some depth must (re)compute
    h = hidden0[:, start:T]  # (1, T - start, d): h^0 of positions start..T-1
    ext = list(known)  # then the drafts, as they come
    device = hidden0.device
    for k, cache in enumerate(caches, start=1):
        cache.truncate(start)
        next_ids = torch.tensor([ext[start + k:T + k]], device=device)  # token i + k at position i
        h, logits = model.mtp_step(k, h, next_ids, cache)
        ext.append(int(logits[0, -1].argmax()))
        cache.truncate(max(0, T - k + 1))  # positions i <= T - k read known tokens only
    return ext[T + 1:]


@torch.no_grad()
def speculative_greedy(model: Transformer, prompt: Sequence[int], *, max_new_tokens: int = 128,
                       eos_id: int = EOS_ID, depth: int | None = None) -> Generation:
    """Greedy continuation of ``prompt`` drafted by the first ``depth`` MTP heads (default all)
    and verified by the main model: the tokens of ``generate`` at temperature 0, in fewer main
    forwards; ``Generation.drafted``/``accepted`` give the acceptance rate."""
    heads = model.cfg.mtp_heads
    depth = heads if depth is None else depth
    if heads == 0:
        raise ValueError("the model has no multi-token-prediction heads to draft with (model.mtp_heads: 0)")
    if not 1 <= depth <= heads:
        raise ValueError(f"draft depth {depth} must be between 1 and model.mtp_heads={heads}")
    n_max, limit = budget(model, prompt, max_new_tokens)
    device, dtype = model_device(model)
    capacity = len(prompt) + n_max
    was_training = model.training
    model.eval()
    try:
        main = KVCache.for_model(model.cfg, 1, capacity, device=device, dtype=dtype)
        caches = [KVCache.for_model(model.cfg, 1, capacity, n_layers=1, device=device, dtype=dtype)
                  for _ in range(depth)]
        hidden0 = torch.zeros(1, capacity, model.cfg.d_model, device=device, dtype=dtype)  # h^0 per position
        h = model.hidden(torch.tensor([list(prompt)], device=device), cache=main)
        hidden0[:, :len(prompt)] = h
        new = [int(model.readout(model.norm(h[:, -1])).argmax())]
        known, tokens = list(prompt), []
        forwards, drafted, accepted = 1, 0, 0
        while True:
            for token in new:
                if token == eos_id:
                    return Generation(tokens=tokens, stop="eos", forwards=forwards, drafted=drafted, accepted=accepted)
                tokens.append(token)
                known.append(token)
                if len(tokens) == n_max:
                    return Generation(tokens=tokens, stop=limit, forwards=forwards, drafted=drafted, accepted=accepted)
            T = len(known) - 1  # x_T is not in the main cache yet
            drafts = _draft(model, known, hidden0, caches[:min(depth, n_max - len(tokens) - 1)])
            h = model.hidden(torch.tensor([[known[T], *drafts]], device=device), cache=main)  # positions T..T+n
            greedy = model.readout(model.norm(h)).argmax(-1)[0].tolist()  # greedy[j]: the token after T + j
            a = 0
            while a < len(drafts) and drafts[a] == greedy[a]:
                a += 1
            main.truncate(T + a + 1)
            hidden0[:, T:T + a + 1] = h[:, :a + 1]
            forwards, drafted, accepted = forwards + 1, drafted + len(drafts), accepted + a
            new = drafts[:a] + [greedy[a]]
    finally:
        model.train(was_training)
