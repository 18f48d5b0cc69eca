"""FIM (PSM/SPM) and MLM (BERT 80/10/10, SpanBERT spans) transforms."""

from __future__ import annotations

import numpy as np
import pytest

from raylm.config import ConfigError, from_dict
from raylm.data.transforms import (
    IGNORE_INDEX,
    FIMConfig,
    MLMConfig,
    fim_inverse,
    fim_transform,
    fim_transform_middle,
    mlm_mask,
    span_length_probs,
)

PRE, MID, SUF, EOS, MASK = 5, 6, 7, 2, 4
SPECIALS = (0, 1, 2, 3, 4, 5, 6, 7)


def doc(rng: np.random.Generator, n: int, eos: bool = True) -> np.ndarray:
    body = rng.integers(8, 1000, size=n).astype(np.int32)
    return np.append(body, EOS).astype(np.int32) if eos else body


# --- FIM -------------------------------------------------------------------------------------


def test_fim_psm_structure():
    rng = np.random.default_rng(0)
    d = doc(rng, 50)
    out = fim_transform(d, np.random.default_rng(1), FIMConfig(rate=1.0, spm_rate=0.0))
    assert len(out) == len(d) + 3 and out.dtype == d.dtype
    assert out[0] == PRE and out[-1] == EOS
    s, m = int(np.flatnonzero(out == SUF)[0]), int(np.flatnonzero(out == MID)[0])
    assert 0 < s < m
    prefix, suffix, middle = out[1:s], out[s + 1 : m], out[m + 1 : -1]
    np.testing.assert_array_equal(np.concatenate([prefix, middle, suffix, [EOS]]), d)
    np.testing.assert_array_equal(fim_inverse(out), d)


def test_fim_spm_structure_is_the_papers_variant():
    d = doc(np.random.default_rng(0), 50)
    out = fim_transform(d, np.random.default_rng(2), FIMConfig(rate=1.0, spm_rate=1.0))
    assert len(out) == len(d) + 3
    assert out[0] == PRE and out[1] == SUF and out[-1] == EOS  # <pre> <suf> suffix <mid> prefix middle
    m = int(np.flatnonzero(out == MID)[0])
    suffix, prefix_middle = out[2:m], out[m + 1 : -1]
    np.testing.assert_array_equal(np.concatenate([prefix_middle, suffix, [EOS]]), d)
    np.testing.assert_array_equal(fim_inverse(out), d)


def test_fim_rates_split_points_and_recovery_over_many_docs():
    rng = np.random.default_rng(42)
    cfg = FIMConfig(rate=0.5, spm_rate=0.3)
    n, fim, spm, cut_fracs = 4000, 0, 0, []
    for _ in range(n):
        d = doc(rng, int(rng.integers(100, 200)), eos=bool(rng.random() < 0.8))
        out = fim_transform(d, rng, cfg)
        np.testing.assert_array_equal(fim_inverse(out, cfg), d)
        if out is d or (len(out) == len(d) and np.array_equal(out, d)):
            continue
        assert len(out) == len(d) + 3
        assert (out[-1] == EOS) == (d[-1] == EOS)
        fim += 1
        if out[1] == SUF:  # SPM, or PSM with an empty prefix (identical output; ~1% here)
            spm += 1
        else:
            body = len(d) - (d[-1] == EOS)
            cut_fracs.append(int(np.flatnonzero(out == SUF)[0] - 1) / body)  # prefix length
    assert abs(fim / n - 0.5) < 0.03  # sd ~ 0.008
    assert abs(spm / fim - 0.3) < 0.04
    # the first cut is the min of two uniform points: mean 1/3
    assert abs(np.mean(cut_fracs) - 1 / 3) < 0.03


@pytest.mark.parametrize("spm_rate", [0.0, 1.0], ids=["psm", "spm"])
def test_fim_transform_middle_marks_the_middle_and_its_eos(spm_rate):
    """The same output as fim_transform; ``out[start:]`` is the document's middle (its tokens
    between the two cut points, replayed from the same draws) and the eos."""
    cfg = FIMConfig(rate=1.0, spm_rate=spm_rate)
    for seed in range(20):
        d = np.append(np.arange(8, 8 + 40), EOS).astype(np.int32)  # unique tokens: positions are visible
        out, start = fim_transform_middle(d, np.random.default_rng(seed), cfg)
        np.testing.assert_array_equal(out, fim_transform(d, np.random.default_rng(seed), cfg))
        replay = np.random.default_rng(seed)
        replay.random(), replay.random()
        lo, hi = np.sort(replay.integers(0, 41, size=2))
        np.testing.assert_array_equal(out[start:], np.append(d[lo:hi], EOS))
    assert fim_transform_middle(d, np.random.default_rng(0), FIMConfig(rate=0.0))[1] is None


def test_fim_rate_zero_is_identity_and_config_is_checked():
    d = doc(np.random.default_rng(0), 10)
    assert fim_transform(d, np.random.default_rng(0), FIMConfig(rate=0.0)) is d
    with pytest.raises(ConfigError, match="rate"):
        from_dict(FIMConfig, {"rate": 1.5})


# --- MLM -------------------------------------------------------------------------------------


def batch(rng: np.random.Generator, rows: int = 64, cols: int = 512) -> np.ndarray:
    x = rng.integers(8, 32000, size=(rows, cols)).astype(np.int32)
    # sprinkle specials: bos at the start, eos and pad here and there
    x[:, 0] = 1
    x[rng.random(x.shape) < 0.05] = EOS
    x[:, -20:] = 0
    return x


def test_mlm_selection_and_80_10_10():
    rng = np.random.default_rng(0)
    x = batch(rng)
    cfg = MLMConfig(vocab_size=32000)
    inputs, labels = mlm_mask(x, np.random.default_rng(1), cfg)
    assert inputs.dtype == x.dtype and labels.dtype == np.int64 and inputs.shape == x.shape
    special = np.isin(x, SPECIALS)
    sel = labels != IGNORE_INDEX
    assert not np.any(sel & special), "specials are never selected"
    np.testing.assert_array_equal(inputs[special], x[special])
    np.testing.assert_array_equal(labels[sel], x[sel])
    np.testing.assert_array_equal(inputs[~sel], x[~sel])
    assert np.all(labels[~sel] == IGNORE_INDEX)
    frac = sel.sum() / (~special).sum()
    assert abs(frac - 0.15) < 0.01  # n ~ 29k eligible, sd ~ 0.002
    masked = inputs[sel] == MASK
    unchanged = inputs[sel] == x[sel]
    random = ~masked & ~unchanged
    assert abs(masked.mean() - 0.8) < 0.02
    assert abs(random.mean() - 0.1) < 0.015
    assert abs(unchanged.mean() - 0.1) < 0.015  # includes the rare random draw equal to the original
    assert not np.any(np.isin(inputs[sel][random], SPECIALS)), "random replacements are non-special"


def test_random_replacements_cover_only_non_special_ids():
    cfg = MLMConfig(vocab_size=12, special_ids=(0, 2, 4, 5, 11), mask_token_ratio=0.0, random_token_ratio=1.0,
                    mask_prob=0.5)  # fmt: skip
    x = np.full(20000, 7, dtype=np.int64)
    inputs, labels = mlm_mask(x, np.random.default_rng(0), cfg)
    drawn = inputs[labels != IGNORE_INDEX]
    assert set(np.unique(drawn).tolist()) == {1, 3, 6, 7, 8, 9, 10}


def test_mlm_is_deterministic_for_a_seed():
    x = batch(np.random.default_rng(0), rows=4)
    cfg = MLMConfig(vocab_size=32000)
    a = mlm_mask(x, np.random.default_rng(5), cfg)
    b = mlm_mask(x, np.random.default_rng(5), cfg)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def runs(mask: np.ndarray) -> np.ndarray:
    """Lengths of the runs of True in a 1-D bool array."""
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(d == -1) - np.flatnonzero(d == 1)


@pytest.mark.parametrize("mean", [2.0, 3.0, 3.8])
def test_span_masking_makes_contiguous_spans_of_the_configured_mean(mean):
    rng = np.random.default_rng(7)
    x = rng.integers(8, 32000, size=(32, 2048)).astype(np.int32)  # no specials: spans are runs
    cfg = MLMConfig(vocab_size=32000, span=True, mean_span_length=mean)
    inputs, labels = mlm_mask(x, np.random.default_rng(8), cfg)
    sel = labels != IGNORE_INDEX
    np.testing.assert_array_equal(sel.sum(axis=1), round(0.15 * 2048))  # exactly the budget per row
    lengths = np.concatenate([runs(row) for row in sel])
    assert lengths.max() <= 10
    assert abs(lengths.mean() - mean) < 0.15, lengths.mean()
    # 80/10/10 is chosen per span: a span is either all mask or has no mask at all
    for row_in, row_sel in zip(inputs[:4], sel[:4]):
        d = np.diff(np.concatenate(([0], row_sel.astype(np.int8), [0])))
        for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
            m = row_in[a:b] == MASK
            assert m.all() or not m.any()
    assert abs((inputs[sel] == MASK).mean() - 0.8) < 0.05


def test_span_masking_skips_specials_and_handles_short_rows():
    rng = np.random.default_rng(0)
    x = batch(rng, rows=8, cols=256)
    cfg = MLMConfig(vocab_size=32000, span=True)
    inputs, labels = mlm_mask(x, np.random.default_rng(1), cfg)
    special = np.isin(x, SPECIALS)
    assert not np.any((labels != IGNORE_INDEX) & special)
    np.testing.assert_array_equal(inputs[special], x[special])
    for n in (0, 1, 3, 7, 20):
        row = np.arange(8, 8 + n, dtype=np.int32)
        _, lab = mlm_mask(row, np.random.default_rng(n), cfg)
        assert (lab != IGNORE_INDEX).sum() == round(0.15 * n)


def test_span_length_distribution_matches_spanbert():
    ks = np.arange(1, 11)
    p = span_length_probs(3.0, 10)
    assert p @ ks == pytest.approx(3.0) and p.sum() == pytest.approx(1.0)
    assert np.all(np.diff(p) < 0)  # geometric: decreasing
    w = 0.2 * 0.8 ** (ks - 1)  # SpanBERT: p=0.2 clipped at 10
    spanbert_mean = float((w / w.sum()) @ ks)
    np.testing.assert_allclose(span_length_probs(spanbert_mean, 10), w / w.sum(), atol=1e-9)


def test_mlm_config_validation():
    with pytest.raises(ConfigError, match="mask_prob"):
        MLMConfig(vocab_size=100, mask_prob=0.0).validate()
    with pytest.raises(ConfigError, match="exceed"):
        MLMConfig(vocab_size=100, mask_token_ratio=0.9, random_token_ratio=0.2).validate()
    with pytest.raises(ConfigError, match="mean_span_length"):
        MLMConfig(vocab_size=100, mean_span_length=6.0).validate()
    with pytest.raises(ConfigError, match="vocab_size"):
        from_dict(MLMConfig, {"vocab_size": 8})
