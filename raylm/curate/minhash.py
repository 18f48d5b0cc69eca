"""Vectorised MinHash signatures and LSH band keys for whole batches of documents.

Signatures are datasketch's (Broder 1997 MinHash with datasketch 2.x's seeded ``affine32``
permutations ``a * fmix32(h) + b mod 2**32``), so a signature here equals
``datasketch.MinHash(num_perm, seed).update_batch`` fed the same 32-bit shingle hashes. What
differs is the cost: instead of hashing every shingle in Python, a batch is concatenated
into one byte array, every word is hashed once with a polynomial prefix hash over the whole
array, n-gram hashes are combined from word hashes on whole arrays, and the permutations run
on blocks of shingles with a per-document ``minimum.reduceat``.

Shingles are lowercased whitespace-split word n-grams; a document written without spaces
(Chinese, Japanese) is shingled by character n-grams instead.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_P = np.uint64(0x100000001B3)  # FNV prime: odd, so powers are invertible mod 2**64
MIX = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
     0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x27D4EB2F165667C5, 0x94D049BB133111EB,
     0xBF58476D1CE4E5B9, 0x2545F4914F6CDD1D, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1],
    dtype=np.uint64,
)
_BLOCK = 8192  # shingles per permutation block; perm-major (128 x 8192) uint32 was 8x faster than shingle-major


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: spreads every input bit over the output."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The affine permutation parameters ``(a, b)`` of ``datasketch.MinHash(num_perm, seed)``.

    Drawn as datasketch 2.x draws them (odd 32-bit ``a``, 32-bit ``b`` from a seeded
    ``RandomState``; a test pins the equality), without importing datasketch, whose import
    costs every Ray worker about a second.
    """
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, as datasketch applies it before its permutations."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))


@lru_cache(maxsize=8)
def _powers(n: int, base: int = int(_P)) -> np.ndarray:
    """``base**i mod 2**64`` for i < n."""
    with np.errstate(over="ignore"):
        out = np.empty(n, dtype=np.uint64)
        out[0] = 1
        step = np.uint64(base)
        # doubling: fill [k, 2k) from [0, k) times base**k
        k = 1
        while k < n:
            m = min(k, n - k)
            out[k : k + m] = out[:m] * step
            step = step * step
            k += m
    return out


def _segment_hashes(codes: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Hash ``codes[s:e]`` for every (s, e) at once with one prefix sum (mod 2**64).

    The prefix sum gives ``sum codes[i] * P**i`` over a segment; multiplying by ``P**-s``
    (P is odd, so it has an inverse mod 2**64) shifts it to ``sum codes[s+j] * P**j``, which
    depends on the segment's bytes alone, not on where it sits in the batch or on the
    batch's size: a document hashes the same in every batch.
    """
    n = len(codes)
    size = _next_pow2(n + 1)
    pw, inv = _powers(size), _powers(size, int(_P_INV))
    with np.errstate(over="ignore"):
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(codes.astype(np.uint64) * pw[:n], out=prefix[1:])
        shifted = (prefix[ends] - prefix[starts]) * inv[starts]
        return fmix64(shifted + (ends - starts).astype(np.uint64))


def _next_pow2(n: int) -> int:
    return 1 << max(10, (n - 1).bit_length())


def _combine_ngrams(h: np.ndarray, doc_of: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of runs of ``n`` consecutive tokens that stay inside one document."""
    m = len(h) - n + 1
    if m <= 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    with np.errstate(over="ignore"):
        g = h[:m] * MIX[0]
        for j in range(1, n):
            g = g + h[j : j + m] * MIX[j % len(MIX)]
    ok = doc_of[:m] == doc_of[n - 1 : n - 1 + m]
    return fmix64(g[ok]), doc_of[:m][ok]


def _whole_doc(h: np.ndarray, doc_of: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """One hash over all tokens of each short document (fewer tokens than ``n``)."""
    out = np.empty(len(docs), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, d in enumerate(docs):
            toks = h[doc_of == d]
            acc = np.uint64(len(toks))
            for j, t in enumerate(toks):
                acc = acc + t * MIX[j % len(MIX)]
            out[i] = fmix64(np.array([acc], dtype=np.uint64))[0]
    return out


_WS = np.zeros(256, dtype=bool)
_WS[[0, 9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True  # byte 0 separates documents


def _word_tokens(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hash every lowercased whitespace-separated word of a batch; one pass over one blob."""
    joined = "\x00".join(texts)
    if joined.count("\x00") != len(texts) - 1:  # a document holds NUL itself
        joined = "\x00".join(t.replace("\x00", " ") for t in texts)
    if joined.isascii():  # O(1) in CPython; bytes.lower() is many times faster than str.lower()
        blob = np.frombuffer((joined + "\x00").encode("ascii").lower(), np.uint8)
    else:
        blob = np.frombuffer((joined.lower() + "\x00").encode("utf-8", "surrogatepass"), np.uint8)
    seps = np.flatnonzero(_WS[blob])
    starts = np.concatenate(([0], seps[:-1] + 1))
    doc_idx = np.cumsum(np.concatenate(([0], blob[seps[:-1]] == 0)))  # document of each word
    keep = seps > starts  # runs of whitespace give empty words
    return _segment_hashes(blob, starts[keep], seps[keep]), doc_idx[keep]


def _tokens(texts: list[str], char_ngram_docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token hashes and their document index, grouped by document in text order.

    Word documents: lowercased, whitespace-separated words, each hashed over its UTF-8
    bytes. Character documents: every non-space code point is a token.
    """
    char_docs = np.flatnonzero(char_ngram_docs)
    if len(char_docs) == 0:
        return _word_tokens(texts)
    word_docs = np.flatnonzero(~char_ngram_docs)
    hashes, owners = [], []
    if len(word_docs):
        h, d = _word_tokens([texts[i] for i in word_docs])
        hashes.append(h)
        owners.append(word_docs[d])
    parts = ["".join(texts[i].lower().split()) for i in char_docs]
    lens = np.array([len(t) for t in parts], dtype=np.int64)
    cps = np.frombuffer("".join(parts).encode("utf-32-le", "surrogatepass"), np.uint32)
    hashes.append(fmix64(cps.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1)))
    owners.append(np.repeat(char_docs, lens))
    h, d = np.concatenate(hashes), np.concatenate(owners)
    order = np.argsort(d, kind="stable")
    return h[order], d[order]


def looks_unspaced(text: str, min_chars_per_word: float = 12.0) -> bool:
    """True for text written without spaces between words (Chinese, Japanese)."""
    words = text.count(" ") + text.count("\n") + 1
    return len(text) >= 2 * min_chars_per_word and len(text) / words > min_chars_per_word


def shingle_hashes(texts: list[str], ngram: int = 5, char_ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """32-bit shingle hashes of a batch and the document each belongs to (sorted by document).

    Returns ``(hv, doc)``: ``hv`` is uint64 holding values < 2**32 (as datasketch's
    ``hash32``), ``doc`` the batch index of each shingle. Every non-empty document has at
    least one shingle: one shorter than the n-gram size is one shingle of all its tokens.
    """
    unspaced = np.fromiter((looks_unspaced(t) for t in texts), dtype=bool, count=len(texts))
    h, doc_of = _tokens(texts, unspaced)
    hv_parts, doc_parts = [], []
    for flag, n in ((False, ngram), (True, char_ngram)):
        sel = unspaced[doc_of] == flag
        if not sel.any():
            continue
        g, d = _combine_ngrams(h[sel], doc_of[sel], n)
        hv_parts.append(g)
        doc_parts.append(d)
        counts = np.bincount(doc_of[sel], minlength=len(texts))
        short = np.flatnonzero((counts > 0) & (counts < n))
        if len(short):
            hv_parts.append(_whole_doc(h[sel], doc_of[sel], short))
            doc_parts.append(short)
    if not hv_parts:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    hv, doc = np.concatenate(hv_parts), np.concatenate(doc_parts)
    order = np.argsort(doc, kind="stable")
    return (hv[order] >> np.uint64(32)), doc[order]


def signatures(hv: np.ndarray, doc: np.ndarray, num_docs: int, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """MinHash signatures ``(num_docs, num_perm)`` uint32 from shingle hashes sorted by doc.

    datasketch 2.x's default ``affine32`` scheme: ``a * fmix32(h) + b mod 2**32``. A
    document without shingles keeps the all-ones signature datasketch starts from.
    """
    a, b = permutations(num_perm, seed)
    out = np.full((num_perm, num_docs), np.uint32(0xFFFFFFFF), dtype=np.uint32)  # (perm, doc)
    if len(hv) == 0:
        return out.T.copy()
    mixed = fmix32(hv.astype(np.uint32))
    b_col = b[:, None]
    with np.errstate(over="ignore"):
        for lo in range(0, len(mixed), _BLOCK):
            blk, blk_doc = mixed[lo : lo + _BLOCK], doc[lo : lo + _BLOCK]
            ph = np.multiply.outer(a, blk)  # (perm, shingle): reductions run along rows
            ph += b_col
            first = np.flatnonzero(np.concatenate(([True], blk_doc[1:] != blk_doc[:-1])))
            rows = blk_doc[first]
            out[:, rows] = np.minimum(out[:, rows], np.minimum.reduceat(ph, first, axis=1))
    return out.T.copy()


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """LSH band keys ``(num_docs, bands)`` uint64: equal keys mean equal band slices."""
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {sig.shape[1]}")
    s = sig[:, : bands * rows].astype(np.uint64).reshape(len(sig), bands, rows)
    with np.errstate(over="ignore"):
        acc = np.arange(1, bands + 1, dtype=np.uint64) * MIX[11]  # the band index is part of the key
        acc = np.broadcast_to(acc, (len(sig), bands)).copy()
        for j in range(rows):
            acc = fmix64(acc ^ (s[:, :, j] * MIX[j % len(MIX)]))
    return acc


def lsh_params(num_perm: int) -> tuple[int, int]:
    """Default (bands, rows): rows=4 gives candidates well below the threshold (recall)."""
    rows = 4 if num_perm >= 64 else 2
    return num_perm // rows, rows


def band_similarity(collisions: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Jaccard estimated from the share of bands two signatures share: P(band) = J**rows."""
    return np.power(np.clip(collisions / bands, 0.0, 1.0), 1.0 / rows)


def min_shared_bands(threshold: float, bands: int, rows: int, recall: float) -> int:
    """Largest band count m with P(Binomial(bands, threshold**rows) >= m) >= recall."""
    from math import comb

    p = threshold**rows
    pmf = [comb(bands, k) * p**k * (1 - p) ** (bands - k) for k in range(bands + 1)]
    tail = 0.0
    for m in range(bands, 0, -1):  # tail = P(count >= m)
        tail += pmf[m]
        if tail >= recall:
            return m
    return 1
