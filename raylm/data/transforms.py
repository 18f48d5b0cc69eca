"""Per-document token transforms applied before packing: fill-in-the-middle and masked-LM masking.

* FIM follows Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the
  Middle": a document is cut at two uniformly random points into prefix/middle/suffix and
  rearranged with sentinel tokens so that a left-to-right model learns to infill. PSM mode is
  ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle``; SPM mode is the paper's
  joint-training SPM variant (Appendix D), ``<fim_prefix> <fim_suffix> suffix <fim_middle>
  prefix middle``, in which prefix and middle stay contiguous. The paper splits at character
  level before tokenisation; here the split is at token level (after tokenisation), which
  avoids re-tokenising but can cut inside a word.
* MLM follows Devlin et al. 2019 (BERT): each non-special token is selected with probability
  ``mask_prob``; of the selected tokens 80% become ``mask_id``, 10% a random non-special token
  and 10% stay as they are; labels hold the original token at selected positions and -100
  elsewhere. The span variant follows Joshi et al. 2020 (SpanBERT): contiguous spans whose
  lengths are geometric, clipped (renormalised) at ``max_span_length``, are masked until
  ``mask_prob`` of the tokens are selected; the 80/10/10 choice is made per span.

Token ids default to the project's sentencepiece model: pad=0, bos=1, eos=2, unk=3, mask=4,
fim_prefix=5, fim_middle=6, fim_suffix=7.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from raylm.config import ConfigError

IGNORE_INDEX = -100
"""Label of positions that carry no loss (PyTorch's ``cross_entropy`` default)."""


def _fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}: {value} is not a fraction between 0 and 1")


# --- fill in the middle ------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class FIMConfig:
    rate: float = 0.5
    """Fraction of documents transformed (the paper's FIM rate; 0.5 costs no left-to-right
    ability at the scales it studied)."""
    spm_rate: float = 0.5
    """Fraction of the transformed documents put in SPM rather than PSM order."""
    seed: int = 0
    """Seed for ``rng`` when a caller builds one from the config (``fim_rng``)."""
    fim_prefix_id: int = 5
    fim_middle_id: int = 6
    fim_suffix_id: int = 7
    eos_id: int = 2
    """A trailing eos stays at the very end of the transformed document."""

    def validate(self) -> None:
        _fraction("rate", self.rate)
        _fraction("spm_rate", self.spm_rate)
        ids = (self.fim_prefix_id, self.fim_middle_id, self.fim_suffix_id)
        if len(set(ids)) != 3:
            raise ConfigError(f"fim_prefix_id/fim_middle_id/fim_suffix_id must differ, got {ids}")


def fim_rng(cfg: FIMConfig, worker: int = 0) -> np.random.Generator:
    """A generator seeded from ``cfg.seed`` and a worker/shard index."""
    return np.random.default_rng([cfg.seed, worker])


def fim_transform(tokens: np.ndarray, rng: np.random.Generator, cfg: FIMConfig | None = None) -> np.ndarray:
    """FIM-transform one document with probability ``cfg.rate``; otherwise return it unchanged.

    A transformed document is exactly 3 tokens longer. If it ends in ``eos_id`` that eos is
    taken off before splitting and put back at the end. The two cut points are drawn uniformly
    over the ``n + 1`` token gaps of the ``n`` content tokens, so any part may be empty."""
    return fim_transform_middle(tokens, rng, cfg)[0]


def fim_transform_middle(tokens: np.ndarray, rng: np.random.Generator,
                         cfg: FIMConfig | None = None) -> tuple[np.ndarray, int | None]:
    """``fim_transform`` (the same draws), and where the middle starts in its result: in PSM and
    SPM alike the middle is the last part, before the eos, so ``out[start:]`` is the middle and
    the eos after it, the tokens an infilling model generates. None: not transformed."""
    cfg = cfg or FIMConfig()
    tokens = np.asarray(tokens)
    if rng.random() >= cfg.rate:
        return tokens, None
    spm = rng.random() < cfg.spm_rate
    has_eos = len(tokens) > 0 and tokens[-1] == cfg.eos_id
    body = tokens[:-1] if has_eos else tokens
    lo, hi = np.sort(rng.integers(0, len(body) + 1, size=2))
    prefix, middle, suffix = body[:lo], body[lo:hi], body[hi:]
    pre, mid, suf = (
        np.array([t], dtype=tokens.dtype) for t in (cfg.fim_prefix_id, cfg.fim_middle_id, cfg.fim_suffix_id)
    )
    if spm:
        parts = [pre, suf, suffix, mid, prefix, middle]
    else:
        parts = [pre, prefix, suf, suffix, mid, middle]
    if has_eos:
        parts.append(tokens[-1:])
    out = np.concatenate(parts)
    return out, len(out) - len(middle) - int(has_eos)


def fim_inverse(tokens: np.ndarray, cfg: FIMConfig | None = None) -> np.ndarray:
    """Undo ``fim_transform`` (for tests and debugging): the original document. Assumes the
    sentinel ids do not occur inside documents."""
    cfg = cfg or FIMConfig()
    tokens = np.asarray(tokens)
    if len(tokens) == 0 or tokens[0] != cfg.fim_prefix_id:
        return tokens
    has_eos = tokens[-1] == cfg.eos_id
    body = tokens[1:-1] if has_eos else tokens[1:]
    tail = tokens[-1:] if has_eos else tokens[:0]
    suf = int(np.flatnonzero(body == cfg.fim_suffix_id)[0])
    mid = int(np.flatnonzero(body == cfg.fim_middle_id)[0])
    if suf == 0:  # SPM: <suf> suffix <mid> prefix middle
        return np.concatenate([body[mid + 1 :], body[1:mid], tail])
    # PSM: prefix <suf> suffix <mid> middle
    return np.concatenate([body[:suf], body[mid + 1 :], body[suf + 1 : mid], tail])


# --- masked language modelling -------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class MaskingConfig:
    """How ``mlm_mask`` selects and replaces tokens, everything but the vocabulary (a training
    config's ``mlm``: the vocabulary is the model's)."""

    mask_prob: float = 0.15
    """Fraction of the non-special tokens selected for prediction."""
    mask_token_ratio: float = 0.8
    """Of the selected tokens, the fraction replaced with ``mask_id``."""
    random_token_ratio: float = 0.1
    """Of the selected tokens, the fraction replaced with a random non-special token; the rest
    (``1 - mask_token_ratio - random_token_ratio``) are left unchanged."""
    mask_id: int = 4
    special_ids: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    """Ids that are never selected and never drawn as random replacements."""
    span: bool = False
    """SpanBERT span masking instead of independent token selection."""
    mean_span_length: float = 3.0
    """Mean span length. Lengths follow a geometric distribution over ``1..max_span_length``
    (renormalised after clipping, as in SpanBERT's code) whose ``p`` is solved for this mean;
    SpanBERT's ``p=0.2``, ``max=10`` corresponds to a mean of about 3.8."""
    max_span_length: int = 10
    """Longest span (SpanBERT clips at 10)."""
    seed: int = 0
    """Seed for ``rng`` when a caller builds one from the config (``mlm_rng``)."""

    def validate(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"mask_prob: {self.mask_prob} must be between 0 and 1 (exclusive)")
        _fraction("mask_token_ratio", self.mask_token_ratio)
        _fraction("random_token_ratio", self.random_token_ratio)
        if self.mask_token_ratio + self.random_token_ratio > 1.0 + 1e-9:
            raise ConfigError("mask_token_ratio + random_token_ratio must not exceed 1")
        if self.seed < 0:
            raise ConfigError(f"seed: {self.seed} must not be negative")
        if self.max_span_length < 1:
            raise ConfigError(f"max_span_length: {self.max_span_length} must be at least 1")
        if not 1.0 <= self.mean_span_length < (self.max_span_length + 1) / 2:
            raise ConfigError(
                f"mean_span_length: {self.mean_span_length} must be in [1, {(self.max_span_length + 1) / 2}) "
                f"for max_span_length={self.max_span_length}"
            )


@dataclasses.dataclass(kw_only=True)
class MLMConfig(MaskingConfig):
    vocab_size: int
    """Size of the vocabulary; random replacement tokens are drawn from ``[0, vocab_size)``
    minus ``special_ids``."""

    def validate(self) -> None:
        super().validate()
        if self.vocab_size <= len(set(self.special_ids)):
            raise ConfigError(f"vocab_size: {self.vocab_size} leaves no non-special tokens")
        if not 0 <= self.mask_id < self.vocab_size:
            raise ConfigError(f"mask_id: {self.mask_id} is outside the vocabulary")


def mlm_rng(cfg: MLMConfig, worker: int = 0) -> np.random.Generator:
    """A generator seeded from ``cfg.seed`` and a worker/shard index."""
    return np.random.default_rng([cfg.seed, worker])


def span_length_probs(mean: float, max_len: int) -> np.ndarray:
    """Probabilities of span lengths ``1..max_len``: geometric, renormalised over that range,
    with ``p`` chosen (by bisection) so that the mean is ``mean``."""
    ks = np.arange(1, max_len + 1)

    def dist(p: float) -> np.ndarray:
        w = p * (1 - p) ** (ks - 1)
        return w / w.sum()

    if mean <= 1.0:
        return (ks == 1).astype(np.float64)
    lo, hi = 1e-9, 1.0 - 1e-12  # the mean falls as p rises
    for _ in range(100):
        p = (lo + hi) / 2
        if float(dist(p) @ ks) > mean:
            lo = p
        else:
            hi = p
    return dist((lo + hi) / 2)


def _random_non_special(
    rng: np.random.Generator, size: int, vocab_size: int, specials: np.ndarray
) -> np.ndarray:
    """Uniform draws from ``[0, vocab_size)`` minus the sorted unique ``specials``."""
    r = rng.integers(0, vocab_size - len(specials), size=size)
    # Shift each draw past the specials at or below it.
    return r + np.searchsorted(specials - np.arange(len(specials)), r, side="right")


def _span_select(
    n: int, rng: np.random.Generator, cfg: MLMConfig, probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Select ``round(mask_prob * n)`` of ``n`` positions as separated spans.

    Returns (selected mask, span id of every position or -1)."""
    budget = int(round(cfg.mask_prob * n))
    sel = np.zeros(n, dtype=bool)
    span_id = np.full(n, -1, dtype=np.int64)
    if budget == 0:
        return sel, span_id
    draw = int(budget / cfg.mean_span_length * 1.5) + 16
    lengths = rng.choice(np.arange(1, len(probs) + 1), size=draw, p=probs)
    while lengths.sum() < budget:  # practically never
        lengths = np.concatenate((lengths, rng.choice(np.arange(1, len(probs) + 1), size=draw, p=probs)))
    csum = np.cumsum(lengths)
    k = int(np.searchsorted(csum, budget)) + 1
    lengths = lengths[:k].copy()
    lengths[-1] -= csum[k - 1] - budget  # trim the last span to hit the budget exactly
    # Spans need a gap of at least one token between them; if they do not fit, merge the
    # smallest count of spans that makes them fit (only for very short sequences).
    while k > 1 and budget + k - 1 > n:
        lengths = np.concatenate((lengths[:-2], [lengths[-2] + lengths[-1]]))
        k -= 1
    free = n - budget - (k - 1)
    # Random composition of the free tokens into k + 1 gaps (stars and bars).
    bars = np.sort(rng.choice(free + k, size=k, replace=False))
    gaps = np.diff(np.concatenate(([-1], bars))) - 1
    starts = np.cumsum(gaps + np.concatenate(([0], lengths[:-1] + 1)))
    idx = np.repeat(starts, lengths) + (np.arange(budget) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    sel[idx] = True
    span_id[idx] = np.repeat(np.arange(k), lengths)
    return sel, span_id


def mlm_mask(tokens: np.ndarray, rng: np.random.Generator, cfg: MLMConfig) -> tuple[np.ndarray, np.ndarray]:
    """BERT/SpanBERT masking of ``tokens`` (1-D, or 2-D with one sequence per row).

    Returns ``(inputs, labels)``: ``inputs`` has the dtype of ``tokens``; ``labels`` is int64,
    the original token at selected positions and -100 elsewhere. Special tokens are never
    selected. Spans (``cfg.span``) are laid out over the non-special positions of each row, so
    a span may straddle a special token (e.g. the eos between two packed documents)."""
    cfg.validate()
    tokens = np.asarray(tokens)
    specials = np.unique(np.asarray(cfg.special_ids, dtype=np.int64))
    specials = specials[(specials >= 0) & (specials < cfg.vocab_size)]
    eligible = ~np.isin(tokens, specials)

    if not cfg.span:
        selected = eligible & (rng.random(tokens.shape) < cfg.mask_prob)
        u = rng.random(tokens.shape)  # per-token 80/10/10 draw
    else:
        if tokens.ndim == 0:
            raise ValueError("mlm_mask: tokens must be a 1-D or 2-D array")
        rows = tokens.reshape(int(np.prod(tokens.shape[:-1])), tokens.shape[-1])
        elig_rows = eligible.reshape(rows.shape)
        selected = np.zeros(rows.shape, dtype=bool)
        u = np.zeros(rows.shape)
        probs = span_length_probs(cfg.mean_span_length, cfg.max_span_length)
        for r in range(rows.shape[0]):  # one iteration per sequence, not per token
            pos = np.flatnonzero(elig_rows[r])
            sel, span_id = _span_select(len(pos), rng, cfg, probs)
            selected[r, pos[sel]] = True
            per_span = rng.random(int(span_id.max()) + 1 if len(span_id) else 0)  # 80/10/10 per span
            u[r, pos[sel]] = per_span[span_id[sel]]
        selected = selected.reshape(tokens.shape)
        u = u.reshape(tokens.shape)

    labels = np.where(selected, tokens, IGNORE_INDEX).astype(np.int64)
    inputs = tokens.copy()
    to_mask = selected & (u < cfg.mask_token_ratio)
    to_random = selected & (u >= cfg.mask_token_ratio) & (u < cfg.mask_token_ratio + cfg.random_token_ratio)
    inputs[to_mask] = cfg.mask_id
    inputs[to_random] = _random_non_special(rng, int(to_random.sum()), cfg.vocab_size, specials).astype(
        tokens.dtype
    )
    return inputs, labels
