"""Generation samples during training: what a person reads to see a model learn to write.

At every evaluation (``raylm.train.evaluate.Evaluator`` hooks) each ``eval.samples`` prompt is
continued, and each ``[prefix, suffix]`` pair infilled, by the unwrapped model with
``raylm.model.generate`` (KV cache; greedy by default). The texts are returned as
``samples/<i>`` metrics, which rank 0 writes to TensorBoard's text tab and ``metrics.jsonl``.
Every rank generates (an FSDP2 forward is a collective), with the same seeded generator, so all
ranks decode the same tokens; the sampler has its own generator and the evaluator restores the
training RNG, so samples leave training as it was.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from raylm.data.tokenizer import load_tokenizer
from raylm.model.generate import SamplingConfig
from raylm.model.text import complete, infill
from raylm.storage import InputError
from raylm.train.evaluate import EvalContext, EvalHook
from raylm.train.run import ResolvedRun


def sample_hook(run: ResolvedRun) -> EvalHook | None:
    """The hook for ``eval.samples`` (None when it asks for none), with ``eval.samples.tokenizer``
    or else the training data's (as the driver found it in the manifests, and checked it is
    there). The tokenizer is loaded here, at start-up, so one missing on this worker's node
    fails the run before its first step."""
    s = run.cfg.eval.samples
    if not s.prompts and not s.infill:
        return None
    try:
        sp, add_bos = load_tokenizer(s.tokenizer or run.tokenizer), run.add_bos
    except FileNotFoundError as exc:
        raise InputError(f"eval.samples: {exc}") from None
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
