import numpy as np
import pytest
from datasketch import MinHash

from raylm.curate import minhash as mh

EN = ("The National Assembly shall deliberate and decide upon the national budget bill. "
      "The Executive shall formulate the budget bill for each fiscal year and submit it to the "
      "National Assembly within ninety days before the beginning of a fiscal year.")


def test_signatures_equal_datasketch_on_the_same_shingles():
    texts = [EN, EN.upper(), "short text", "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다."]
    hv, doc = mh.shingle_hashes(texts)
    sig = mh.signatures(hv, doc, len(texts), num_perm=64, seed=7)
    for i in range(len(texts)):
        ref = MinHash(num_perm=64, seed=7, hashfunc=int)
        ref.update_batch(hv[doc == i].astype(np.uint32).tolist())
        assert np.array_equal(ref.hashvalues.astype(np.uint32), sig[i])


def test_a_documents_signature_does_not_depend_on_its_batch():
    """Near-duplicates land in different batches of different sizes; their shingles must
    hash alike there, or LSH never brings them together."""
    rng = np.random.default_rng(3)
    words = EN.split()
    filler = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(5, 4000, size=300)]
    alone = mh.signatures(*mh.shingle_hashes([EN]), 1)[0]
    for batch in (filler[:3] + [EN], filler + [EN], [EN] + filler[:150]):
        hv, doc = mh.shingle_hashes(batch)
        sig = mh.signatures(hv, doc, len(batch))
        assert np.array_equal(sig[batch.index(EN)], alone)


def test_permutations_are_datasketchs():
    for num_perm, seed in ((128, 1), (64, 42)):
        a, b = MinHash(num_perm=num_perm, seed=seed).permutations
        ours = mh.permutations(num_perm, seed)
        assert np.array_equal(ours[0], a) and np.array_equal(ours[1], b)


def test_shingles_are_lowercased_word_5grams():
    hv, doc = mh.shingle_hashes(["a b c d e f", "A  B\tC d\ne F"])
    assert np.array_equal(hv[doc == 0], hv[doc == 1])  # case and whitespace do not matter
    assert (doc == 0).sum() == 2  # 6 words -> 2 five-grams


def test_short_and_empty_documents():
    hv, doc = mh.shingle_hashes(["one two", "", "one two"])
    assert (doc == 0).sum() == 1 and (doc == 1).sum() == 0
    assert hv[doc == 0][0] == hv[doc == 2][0]
    sig = mh.signatures(hv, doc, 3)
    assert (sig[1] == np.uint32(0xFFFFFFFF)).all()


def test_unspaced_text_uses_character_ngrams():
    zh = "中华人民共和国是工人阶级领导的以工农联盟为基础的人民民主专政的社会主义国家" * 2
    assert mh.looks_unspaced(zh) and not mh.looks_unspaced(EN)
    hv, doc = mh.shingle_hashes([zh])
    assert len(hv) == len(zh) - 4  # every 5-character window


def jaccard(a: str, b: str, n: int = 5) -> float:
    def grams(t):
        w = t.lower().split()
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def test_band_similarity_tracks_true_jaccard():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]
    base = list(rng.choice(vocab, 400))
    texts, truth = [" ".join(base)], []
    for edits in (5, 20, 60, 200):
        w = list(base)
        for j in rng.choice(len(w), edits, replace=False):
            w[j] = "x" + w[j]
        texts.append(" ".join(w))
        truth.append(jaccard(texts[0], texts[-1]))
    hv, doc = mh.shingle_hashes(texts)
    bands, rows = mh.lsh_params(128)
    keys = mh.band_keys(mh.signatures(hv, doc, len(texts)), bands, rows)
    shared = (keys[1:] == keys[0]).sum(axis=1)
    est = mh.band_similarity(shared, bands, rows)
    truth = np.array(truth)
    high = truth >= 0.5  # in the range that matters the estimate is close ...
    assert np.all(np.abs(est[high] - truth[high]) < 0.1), (est, truth)
    assert np.all(est[~high] < 0.5), (est, truth)  # ... and dissimilar pairs stay far below
    assert shared[0] > shared[-1]


@pytest.mark.parametrize("bands,rows", [(32, 4), (16, 8)])
def test_band_keys_separate_bands(bands, rows):
    sig = np.zeros((2, 128), np.uint32)
    keys = mh.band_keys(sig, bands, rows)
    assert len(set(keys[0].tolist())) == bands  # equal slices in different bands differ
    assert np.array_equal(keys[0], keys[1])


def test_verification_cut_holds_recall_at_threshold_and_rejects_far_pairs():
    from math import comb

    bands, rows = mh.lsh_params(128)
    need = mh.min_shared_bands(0.8, bands, rows, recall=0.999)

    def accept(j):  # exact P(Binomial(bands, j**rows) >= need)
        p = j**rows
        return sum(comb(bands, k) * p**k * (1 - p) ** (bands - k) for k in range(need, bands + 1))

    assert accept(0.8) >= 0.999 and accept(0.85) > 0.9999
    assert accept(0.4) < 0.002 and accept(0.3) < 1e-4
    assert mh.min_shared_bands(0.8, bands, rows, recall=0.99) >= need  # less recall, stricter cut
