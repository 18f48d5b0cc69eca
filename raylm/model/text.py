"""Text in, text out for a model and its SentencePiece tokenizer: a prompt (plain or
fill-in-the-middle) and its continuation decoded back to text.

Fill in the middle builds the PSM prompt of training's FIM transform (Bavarian et al. 2022;
``raylm.data.transforms.fim_transform``): ``<fim_prefix> prefix <fim_suffix> suffix
<fim_middle>``, after which the model writes the middle and ends it with ``<eos>``, as every
transformed training document ends.

Used by ``raylm generate`` (``raylm.infer.text`` finds a checkpoint's tokenizer) and by the
samples written during training (``raylm.train.samples``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raylm.data.tokenizer import special_ids
from raylm.model.generate import Generation, SamplingConfig, budget, generate
from raylm.model.speculative import speculative_greedy
from raylm.model.transformer import Transformer
from raylm.storage import InputError


def _continuation(sp: Any, context: Sequence[int], new: Sequence[int]) -> str:
    """The text of ``new`` as it reads after ``context`` (a leading space or a character whose
    bytes straddle the two stays whole)."""
    before, whole = sp.decode(list(context)), sp.decode(list(context) + list(new))
    return whole[len(before):] if whole.startswith(before) else sp.decode(list(new))


def _run(model: Transformer, prompt: list[int], cfg: SamplingConfig, speculative: bool) -> Generation:
    try:
        budget(model, prompt, cfg.max_new_tokens)
    except ValueError as exc:
        raise InputError(f"prompt: {exc}") from None
    if speculative:
        if cfg.temperature != 0:
            raise InputError("--speculative decodes greedily: use it with --temperature 0")
        if not model.cfg.mtp_heads:
            raise InputError("--speculative: the checkpoint's model has no multi-token-prediction heads to draft "
                             "with (model.mtp_heads: 0)")
        return speculative_greedy(model, prompt, max_new_tokens=cfg.max_new_tokens, eos_id=cfg.eos_id)
    return generate(model, prompt, cfg)


def complete(model: Transformer, sp: Any, prompt: str, cfg: SamplingConfig, *, add_bos: bool = False,
             speculative: bool = False) -> tuple[str, Generation]:
    """``(the prompt and its continuation, the generation)``."""
    ids = ([special_ids(sp)["<bos>"]] if add_bos else []) + sp.encode(prompt)
    gen = _run(model, ids, cfg, speculative)
    return prompt + _continuation(sp, ids, gen.tokens), gen


def fim_prompt(prefix: Sequence[int], suffix: Sequence[int], ids: dict[str, int]) -> list[int]:
    """PSM: ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle>`` (``ids``: ``special_ids``)."""
    return [ids["<fim_prefix>"], *prefix, ids["<fim_suffix>"], *suffix, ids["<fim_middle>"]]


def infill(model: Transformer, sp: Any, prefix: str, suffix: str, cfg: SamplingConfig, *,
           speculative: bool = False) -> tuple[str, Generation]:
    """``(the middle between prefix and suffix, the generation)``."""
    prefix_ids = sp.encode(prefix)
    gen = _run(model, fim_prompt(prefix_ids, sp.encode(suffix), special_ids(sp)), cfg, speculative)
    return _continuation(sp, prefix_ids, gen.tokens), gen
