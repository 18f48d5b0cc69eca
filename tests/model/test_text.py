"""The FIM prompt at inference is the PSM layout training's FIM transform writes."""

from __future__ import annotations

import numpy as np

from raylm.data.tokenizer import SPECIAL_TOKENS
from raylm.data.transforms import FIMConfig, fim_transform
from raylm.model.text import fim_prompt

IDS = {piece: i for i, piece in enumerate(SPECIAL_TOKENS)}


def test_fim_prompt_is_the_psm_document_up_to_the_middle():
    doc = np.arange(100, 140, dtype=np.int64)
    cfg = FIMConfig(rate=1.0, spm_rate=0.0)
    for seed in range(5):
        out = fim_transform(np.append(doc, cfg.eos_id), np.random.default_rng(seed), cfg).tolist()
        suffix_at, middle_at = out.index(cfg.fim_suffix_id), out.index(cfg.fim_middle_id)
        prefix, suffix, middle = out[1:suffix_at], out[suffix_at + 1:middle_at], out[middle_at + 1:-1]
        assert prefix + middle + suffix == doc.tolist()  # a real PSM split
        # what the model sees at inference, then what it was trained to write after it
        assert fim_prompt(prefix, suffix, IDS) + middle + [cfg.eos_id] == out
