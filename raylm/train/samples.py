"""Generation samples during training: what a person reads to see a model learn to write.

At every evaluation (``raylm.train.evaluate.Evaluator`` hooks) each ``eval.samples`` prompt is
continued, and each ``[prefix, suffix]`` pair infilled, by the unwrapped model with
``raylm.infer.generate`` (KV cache; greedy by default). The texts are returned as
``samples/<i>`` metrics, which rank 0 writes to TensorBoard's text tab and ``metrics.jsonl``.
Every rank generates (an FSDP2 forward is a collective), with the same seeded generator, so all
ranks decode the same tokens; the sampler has its own generator and the evaluator restores the
training RNG, so samples leave training as it was.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from raylm.infer.generate import SamplingConfig
from raylm.infer.text import complete, infill, resolve_tokenizer
from raylm.train.config import TrainConfig
from raylm.train.evaluate import EvalContext, EvalHook


def sample_hook(cfg: TrainConfig) -> EvalHook | None:
    """The hook for ``cfg.eval.samples`` (None when it asks for none). The tokenizer is loaded
    here, at start-up, so a missing one fails the run before its first step."""
    s = cfg.eval.samples
    if not s.prompts and not s.infill:
        return None
    sp, add_bos = resolve_tokenizer(cfg, s.tokenizer)
    sampling = SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                              top_p=s.top_p, seed=s.seed)
    sampling.validate()

    def hook(model: nn.Module, ctx: EvalContext) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, prompt in enumerate(s.prompts):
            out[f"samples/{i}"] = complete(model, sp, prompt, sampling, add_bos=add_bos)[0]
        for i, (prefix, suffix) in enumerate(s.infill):
            out[f"samples/infill_{i}"] = f"{prefix}[{infill(model, sp, prefix, suffix, sampling)[0]}]{suffix}"
        return out

    return hook
