"""The heuristic quality rules behind ``raylm.curate.steps.quality``, script-aware.

Each rule is a function of a ``Doc`` (the text plus its lines, words and script counts,
computed lazily once and shared by all rules) and its config group; it returns the name of
the first failing check, or ``None``. Semantics follow the papers and datatrove's filters
(Gopher quality/repetition, C4, FineWeb), adapted so that Korean, Chinese and Japanese text
is judged sensibly:

* ``words(text)`` splits on whitespace, but every Han/Hiragana/Katakana character is a word
  of its own (punctuation that follows it sticks to it). Korean eojeol are whitespace words.
* The English-centred checks (mean word length, stop words) apply only to text that is
  mostly Latin script; Korean text gets a particle check instead (``min_korean_particles``).
* Hangul, Han and Kana characters count double when FineWeb measures a "short" line.
* Terminal punctuation includes 。！？ and closing quotes; Korean "…다." ends in a period.
"""

from __future__ import annotations

import re
from functools import cached_property
from itertools import accumulate
from typing import Any

import numpy as np

from raylm.curate.minhash import MIX, fmix64

_CJK = (
    "\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
    "\U00020000-\U0003134f"
)
_HANGUL = "\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f"
_WORD_RE = re.compile(rf"[{_CJK}][^\s\w]*|[^\s{_CJK}]+")
_CJK_RUN_RE = re.compile(rf"[{_CJK}]+")
_HANGUL_RUN_RE = re.compile(rf"[{_HANGUL}]+")
_WIDE_RE = re.compile(rf"[{_CJK}{_HANGUL}]")
_LATIN_RUN_RE = re.compile(r"[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff]+")
_LETTER_RUN_RE = re.compile(r"[^\W\d_]+")
_ALPHA_RE = re.compile(r"[^\W\d_]")
_ALNUM_RE = re.compile(r"[^\W_]")
_PARAGRAPH_RE = re.compile(r"\n[^\S\n]*\n\s*")
_CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_SCRIPT_SAMPLE = 4000  # characters per slice when judging the script of a long document
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"'”’」』)\]]*(?=\s|$)|[。！？]+")

BULLETS = ("•", "●", "◦", "▪", "‣", "·", "-", "*", "–", "—", "○", "■", "□", "➢", "►")
ELLIPSES = ("...", "…")
# C4: a line must end like a sentence (and not with an ellipsis).
C4_TERMINAL = (".", "!", "?", '"', "'", "。", "！", "？", "．", "”", "’", "」", "』")
# FineWeb's "line ends in punctuation" also counts an ellipsis.
FINEWEB_TERMINAL = (*C4_TERMINAL, "…")
POLICY_SUBSTRINGS = (
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies",
)  # fmt: skip
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# Common Korean particles and endings, checked on an eojeol's last syllable.
KOREAN_PARTICLES = frozenset("은는이가을를에의와과도로다요며고서면")
_STRIP_PUNCT = "\"'.,;:!?()[]{}<>«»“”‘’「」『』、。，！？・-–—…"


def words(text: str) -> list[str]:
    """Whitespace words, with each Han/Hiragana/Katakana character counted as a word."""
    return text.split() if text.isascii() else _WORD_RE.findall(text)


def _run_chars(regex: re.Pattern[str], text: str) -> int:
    return sum(map(len, regex.findall(text)))


class Doc:
    """One document's text and the views of it the rules share (each computed at most once)."""

    def __init__(self, text: str) -> None:
        self.text = text

    @cached_property
    def lines(self) -> list[str]:
        """Non-blank lines, as they are (not stripped)."""
        return [line for line in self.text.split("\n") if line.strip()]

    @cached_property
    def stripped_lines(self) -> list[str]:
        return [line.strip() for line in self.lines]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [p for p in _PARAGRAPH_RE.split(self.text.strip()) if p]

    @cached_property
    def words(self) -> list[str]:
        return words(self.text)

    @cached_property
    def word_lengths(self) -> list[int]:
        return list(map(len, self.words))

    @cached_property
    def word_chars(self) -> list[int]:
        """Prefix sums of word lengths: chars of words[i:j] = word_chars[j] - word_chars[i]."""
        return list(accumulate(self.word_lengths, initial=0))

    @cached_property
    def _sample(self) -> str:
        """The text the script is judged on: all of it, or 3 slices of a long one."""
        text = self.text
        if len(text) <= 3 * _SCRIPT_SAMPLE:
            return text
        mid = len(text) // 2 - _SCRIPT_SAMPLE // 2
        return text[:_SCRIPT_SAMPLE] + text[mid : mid + _SCRIPT_SAMPLE] + text[-_SCRIPT_SAMPLE:]

    def gram_hashes(self, n: int) -> np.ndarray:
        """One uint64 hash per n-gram of words, combined from per-word hashes on whole arrays.
        Two different n-grams colliding in 64 bits is not a practical concern."""
        cache = self.__dict__.setdefault("_gram_hashes", {})
        if n not in cache:
            if 1 not in cache:
                cache[1] = np.fromiter(map(hash, self.words), dtype=np.int64, count=len(self.words)).view(np.uint64)
            h = cache[1]
            m = len(h) - n + 1
            with np.errstate(over="ignore"):
                g = h[:m] * MIX[0]
                for j in range(1, n):
                    g = g + h[j : j + m] * MIX[j]
            cache[n] = fmix64(g) if n > 1 else h
        return cache[n]

    @cached_property
    def letters(self) -> int:
        if self.text.isascii():
            return self.latin
        return _run_chars(_LETTER_RUN_RE, self._sample)

    @cached_property
    def latin(self) -> int:
        return _run_chars(_LATIN_RUN_RE, self._sample)

    @cached_property
    def hangul(self) -> int:
        return 0 if self.text.isascii() else _run_chars(_HANGUL_RUN_RE, self._sample)

    @cached_property
    def cjk(self) -> int:
        return 0 if self.text.isascii() else _run_chars(_CJK_RUN_RE, self._sample)

    @property
    def is_latin(self) -> bool:
        """Mostly Latin-script letters."""
        return self.latin > 0 and 2 * self.latin >= self.letters

    @property
    def is_korean(self) -> bool:
        return self.hangul > 0 and 2 * self.hangul >= self.letters


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, their characters)."""
    seen: set[str] = set()
    n = chars = 0
    for item in items:
        if item in seen:
            n += 1
            chars += len(item)
        else:
            seen.add(item)
    return n, chars


def _duplicate_ngram_chars(doc: Doc, n: int, threshold: float, total: int) -> float:
    """Fraction of word characters inside n-grams that occurred before (greedy, non-overlapping,
    as Gopher/datatrove count them).

    The Python loop runs only when the characters covered by any repeated n-gram (an upper
    bound, computed with C-level builtins) exceed ``threshold``: rare for real prose.
    """
    grams = doc.gram_hashes(n)
    m = len(grams)
    _, first, inverse = np.unique(grams, return_index=True, return_inverse=True)
    if len(first) == m:
        return 0.0
    repeated = first[inverse] != np.arange(m)  # n-grams seen earlier in the document
    covered = np.convolve(repeated, np.ones(n, dtype=np.int64))[: m + n - 1] > 0  # their words
    if int(np.asarray(doc.word_lengths)[covered].sum()) <= threshold * total:
        return 0.0
    grams = grams.tolist()
    cum = doc.word_chars
    seen: set[int] = set()
    dup = i = 0
    while i < m:
        gram = grams[i]
        if gram in seen:
            dup += cum[i + n] - cum[i]
            i += n
        else:
            seen.add(gram)
            i += 1
    return dup / total


def length_rule(doc: Doc, cfg: Any) -> str | None:
    n = len(doc.text)
    if n < cfg.min_chars:
        return "length_min_chars"
    if n > cfg.max_chars:
        return "length_max_chars"
    return None


def gopher_rule(doc: Doc, cfg: Any) -> str | None:
    """Gopher quality rules (Rae et al. 2021, appendix A)."""
    ws = doc.words
    n_words = len(ws)
    content = list(filter(_ALNUM_RE.search, ws))  # words that are not just symbols
    n_content = len(content)
    if n_content < cfg.min_words or n_content > cfg.max_words:
        return "gopher_word_count"
    if doc.is_latin and n_content:
        mean = sum(map(len, content)) / n_content
        if mean < cfg.min_mean_word_length or mean > cfg.max_mean_word_length:
            return "gopher_mean_word_length"
    if n_words:
        text = doc.text
        if text.count("#") / n_words > cfg.max_symbol_word_ratio:
            return "gopher_symbol_ratio"
        if (text.count("...") + text.count("…")) / n_words > cfg.max_symbol_word_ratio:
            return "gopher_symbol_ratio"
    lines = doc.stripped_lines
    if lines:
        if sum(1 for line in lines if line.startswith(BULLETS)) / len(lines) > cfg.max_bullet_lines_ratio:
            return "gopher_bullet_lines"
        if sum(1 for line in lines if line.endswith(ELLIPSES)) / len(lines) > cfg.max_ellipsis_lines_ratio:
            return "gopher_ellipsis_lines"
    if n_words and len(list(filter(_ALPHA_RE.search, ws))) / n_words < cfg.min_alpha_words_ratio:
        return "gopher_alpha_words"
    if cfg.min_stop_words > 0 and doc.is_latin:
        stop = frozenset(w.lower() for w in cfg.stop_words)
        found = 0
        for w in ws:
            if w in stop or w.lower().strip(_STRIP_PUNCT) in stop:
                found += 1
                if found >= cfg.min_stop_words:
                    break
        else:
            return "gopher_stop_words"
    if cfg.min_korean_particles > 0 and doc.is_korean:
        found = 0
        for w in ws:
            w = w.rstrip(_STRIP_PUNCT)
            if len(w) >= 2 and w[-1] in KOREAN_PARTICLES:
                found += 1
                if found >= cfg.min_korean_particles:
                    break
        else:
            return "gopher_korean_particles"
    return None


def repetition_rule(doc: Doc, cfg: Any) -> str | None:
    """Gopher repetition rules: duplicate paragraphs/lines, top and duplicate n-grams."""
    n_chars = len(doc.text) or 1
    paragraphs = doc.paragraphs
    if paragraphs:
        n, chars = find_duplicates(paragraphs)
        if n / len(paragraphs) > cfg.dup_para_frac:
            return "rep_dup_para_frac"
        if chars / n_chars > cfg.dup_para_char_frac:
            return "rep_dup_para_char_frac"
    lines = doc.lines
    if lines:
        n, chars = find_duplicates(lines)
        if n / len(lines) > cfg.dup_line_frac:
            return "rep_dup_line_frac"
        if chars / n_chars > cfg.dup_line_char_frac:
            return "rep_dup_line_char_frac"
    ws = doc.words
    total = doc.word_chars[-1]
    if not total:
        return None
    for n, threshold in sorted(cfg.top_ngrams.items()):
        if len(ws) < n:
            continue
        _, first, counts = np.unique(doc.gram_hashes(n), return_index=True, return_counts=True)
        count = int(counts.max())
        i = int(first[counts == count].min())  # ties go to the first seen, as Counter.most_common
        if count > 1 and (doc.word_chars[i + n] - doc.word_chars[i]) * count / total > threshold:
            return f"rep_top_{n}gram"
    for n, threshold in sorted(cfg.dup_ngrams.items()):
        if len(ws) >= n and _duplicate_ngram_chars(doc, n, threshold, total) > threshold:
            return f"rep_dup_{n}gram"
    return None


def _count_words(line: str, enough: int) -> int:
    """Words in ``line``, counted only up to ``enough`` when whitespace alone gets there."""
    n = len(line.split(None, enough)) if enough > 0 else 0
    return n if n >= enough or line.isascii() else len(words(line))


def c4_rule(doc: Doc, cfg: Any) -> tuple[str | None, str, int]:
    """C4 line filters (Raffel et al. 2020) as datatrove's C4QualityFilter.

    Returns (reason, text with the bad lines removed, number of lines removed). Blank lines
    between kept lines are kept as one blank line, so paragraphs survive.
    """
    kept: list[str] = []
    removed = 0
    sentences = 0
    for raw in doc.text.split("\n"):
        line = raw.strip()
        if not line:
            if kept and kept[-1]:
                kept.append("")
            continue
        if cfg.remove_citations and "[" in line:
            line = _CITATION_RE.sub("", line).strip()
        if (
            (cfg.filter_no_terminal_punct and (not line.endswith(C4_TERMINAL) or line.endswith("...")))
            or _count_words(line, cfg.min_words_per_line) < cfg.min_words_per_line
            or (len(line) > cfg.max_word_length and max(map(len, words(line))) > cfg.max_word_length)
        ):
            removed += 1
            continue
        lower = line.lower()
        if cfg.filter_lorem_ipsum and "lorem ipsum" in lower:
            return "c4_lorem_ipsum", doc.text, removed
        if cfg.filter_javascript and "javascript" in lower:
            removed += 1
            continue
        if cfg.filter_curly_bracket and "{" in line:
            return "c4_curly_bracket", doc.text, removed
        if cfg.filter_policy and any(p in lower for p in POLICY_SUBSTRINGS):
            removed += 1
            continue
        kept.append(line)
        if sentences < cfg.min_sentences:  # count only as far as needed
            sentences += max(1, len(_SENTENCE_END_RE.findall(line)))
    if sentences < cfg.min_sentences:
        return "c4_too_few_sentences", doc.text, removed
    if not any(kept):
        return "c4_empty", doc.text, removed
    return None, "\n".join(kept).strip("\n"), removed


def _display_width(line: str) -> int:
    return len(line) + len(_WIDE_RE.findall(line))


def fineweb_rule(doc: Doc, cfg: Any) -> str | None:
    """FineWeb's own filters (Penedo et al. 2024) as datatrove's FineWebQualityFilter."""
    lines = doc.stripped_lines
    if not lines:
        return "fineweb_empty"
    n_lines = len(lines)
    ratio = sum(1 for line in lines if line.endswith(FINEWEB_TERMINAL)) / n_lines
    if ratio < cfg.line_punct_thr and not (ratio == 0 and cfg.line_punct_exclude_zero):
        return "fineweb_line_punct"
    short = cfg.short_line_length
    if doc.hangul or doc.cjk:  # wide characters count double
        n_short = sum(1 for line in lines if len(line) <= short and _display_width(line) <= short)
    else:
        n_short = sum(1 for line in lines if len(line) <= short)
    if n_short / n_lines > cfg.short_line_thr:
        return "fineweb_short_lines"
    n_chars = len(doc.text) - doc.text.count("\n")
    if n_chars and find_duplicates(lines)[1] / n_chars > cfg.char_duplicates_ratio:
        return "fineweb_char_dup"
    n_words = len(doc.words)
    if not n_words or doc.text.count("\n") / n_words > cfg.new_line_ratio:
        return "fineweb_list_ratio"
    return None
