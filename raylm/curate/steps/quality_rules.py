"""The heuristic quality rules behind ``raylm.curate.steps.quality``, per language.

Each rule is a function of a ``Doc`` (the text plus its lines, words and n-gram hashes,
computed lazily once and shared by all rules) and its config group; it returns the name of
the first failing check, or ``None``. Semantics follow the papers and datatrove's filters
(Gopher quality/repetition, C4, FineWeb). What differs between languages is in ``LangRules``
(FineWeb-2, Penedo et al. 2025): the segmenter that makes words (``segment.py``), the stop
words, the rules switched off for the script, and the sentence endings (Korean adds its
final endings, 다/요/까/..., to the terminal punctuation). The thresholds come per language
from the quality table (``quality_table.py``).
"""

from __future__ import annotations

import dataclasses
import re
from functools import cached_property
from itertools import accumulate
from typing import Any

import numpy as np

from raylm.curate.minhash import MIX, fmix64
from raylm.curate.steps import segment

_ALPHA_RE = re.compile(r"[^\W\d_]")
_ALNUM_RE = re.compile(r"[^\W_]")
_PARAGRAPH_RE = re.compile(r"\n[^\S\n]*\n\s*")
_CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"'”’」』)\]]*(?=\s|$)|[。！？]+")
# Korean sentence-final endings: declarative, polite, interrogative, and the nominal endings of
# notices and statutes (…함, …음, …임, …됨, …것); with or without a final period.
_KOREAN_END_RE = re.compile(r"(?:다|요|까|죠|함|음|임|됨|것|니다)[\"'”’」』)\]]*$")

BULLETS = ("•", "●", "◦", "▪", "‣", "·", "-", "*", "–", "—", "○", "■", "□", "➢", "►")
ELLIPSES = ("...", "…")
# C4: a line must end like a sentence (and not with an ellipsis).
C4_TERMINAL = (".", "!", "?", '"', "'", "。", "！", "？", "．", "”", "’", "」", "』")
# FineWeb's "line ends in punctuation" also counts an ellipsis.
FINEWEB_TERMINAL = (*C4_TERMINAL, "…")
POLICY_SUBSTRINGS = (
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies",
)  # fmt: skip
_STRIP_PUNCT = "\"'.,;:!?()[]{}<>«»“”‘’「」『』、。，！？・-–—…"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LangRules:
    """What the rules need to know about a document's language."""

    code: str = "en"
    segmenter: str = "whitespace"
    """A name from ``segment.NAMES``."""
    stop_words: frozenset[str] = frozenset()
    """Lower-cased; empty switches the stop-word rule off."""
    stop_words_on: str = "words"
    """``words``, or ``morphemes`` (Korean: particles and endings)."""
    off: frozenset[str] = frozenset()
    """Drop reasons of rules that do not apply to this language."""

    @property
    def korean(self) -> bool:
        return self.code == "ko"

    def ends_sentence(self, line: str, terminal: tuple[str, ...]) -> bool:
        return line.endswith(terminal) or (self.korean and _KOREAN_END_RE.search(line) is not None)


ENGLISH = LangRules(stop_words=frozenset(("the", "be", "to", "of", "and", "that", "have", "with")))
"""Whitespace words and Gopher's stop words: what the rules assume without a table."""


class Doc:
    """One document's text and the views of it the rules share (each computed at most once)."""

    def __init__(self, text: str, lang: LangRules = ENGLISH) -> None:
        self.text = text
        self.lang = lang

    @cached_property
    def segmenter(self) -> segment.Segmenter:
        return segment.for_text(self.lang.segmenter, self.text)

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
        return self.segmenter.words(self.text)

    @cached_property
    def content_words(self) -> list[str]:
        """Words that are not just symbols."""
        return list(filter(_ALNUM_RE.search, self.words))

    @cached_property
    def word_lengths(self) -> list[int]:
        return list(map(len, self.words))

    @cached_property
    def word_chars(self) -> list[int]:
        """Prefix sums of word lengths: chars of words[i:j] = word_chars[j] - word_chars[i]."""
        return list(accumulate(self.word_lengths, initial=0))

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


def stop_word_count(doc: Doc, enough: int) -> int:
    """Stop words of the document's language among its words (or morphemes), counted up to
    ``enough``; morphemes are analysed line by line only until enough are found."""
    stop = doc.lang.stop_words
    found = 0
    if doc.lang.stop_words_on == "morphemes":
        seg = doc.segmenter
        for line in doc.lines:
            found += sum(1 for m in seg.morphemes(line) if m in stop)  # type: ignore[attr-defined]
            if found >= enough:
                return found
        return found
    for w in doc.words:
        if w in stop or w.lower().strip(_STRIP_PUNCT) in stop:
            found += 1
            if found >= enough:
                break
    return found


def gopher_rule(doc: Doc, cfg: Any) -> str | None:
    """Gopher quality rules (Rae et al. 2021, appendix A), on the language's own words."""
    ws = doc.words
    n_words = len(ws)
    content = doc.content_words
    n_content = len(content)
    off = doc.lang.off
    if n_content < cfg.min_words or n_content > cfg.max_words:
        return "gopher_word_count"
    if n_content and "gopher_mean_word_length" not in off:
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
    if (n_words and "gopher_alpha_words" not in off
            and len(list(filter(_ALPHA_RE.search, ws))) / n_words < cfg.min_alpha_words_ratio):
        return "gopher_alpha_words"
    if (cfg.min_stop_words > 0 and doc.lang.stop_words and "gopher_stop_words" not in off
            and stop_word_count(doc, cfg.min_stop_words) < cfg.min_stop_words):
        return "gopher_stop_words"
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
        if top_ngram_share(doc, n) > threshold:
            return f"rep_top_{n}gram"
    for n, threshold in sorted(cfg.dup_ngrams.items()):
        if len(ws) >= n and _duplicate_ngram_chars(doc, n, threshold, total) > threshold:
            return f"rep_dup_{n}gram"
    return None


def top_ngram_share(doc: Doc, n: int) -> float:
    """Share of word characters covered by the most frequent n-gram (0 if none repeats)."""
    total = doc.word_chars[-1]
    if len(doc.words) < n or not total:
        return 0.0
    _, first, counts = np.unique(doc.gram_hashes(n), return_index=True, return_counts=True)
    count = int(counts.max())
    i = int(first[counts == count].min())  # ties go to the first seen, as Counter.most_common
    return (doc.word_chars[i + n] - doc.word_chars[i]) * count / total if count > 1 else 0.0


def dup_ngram_share(doc: Doc, n: int) -> float:
    """Share of word characters inside n-grams that occurred before."""
    total = doc.word_chars[-1]
    return _duplicate_ngram_chars(doc, n, 0.0, total) if len(doc.words) >= n and total else 0.0


def _count_words(line: str, enough: int, seg: segment.Segmenter) -> int:
    """Words in ``line``, counted only up to ``enough`` when whitespace alone gets there."""
    n = len(line.split(None, enough)) if enough > 0 else 0
    return n if n >= enough or line.isascii() or seg.name == "whitespace" else len(seg.words(line))


def c4_rule(doc: Doc, cfg: Any) -> tuple[str | None, str, int]:
    """C4 line filters (Raffel et al. 2020) as datatrove's C4QualityFilter.

    Returns (reason, text with the bad lines removed, number of lines removed). Blank lines
    between kept lines are kept as one blank line, so paragraphs survive.
    """
    kept: list[str] = []
    removed = 0
    sentences = 0
    seg, lang = doc.segmenter, doc.lang
    terminal_rule = cfg.filter_no_terminal_punct and "c4_terminal_punct" not in lang.off
    min_sentences = 0 if "c4_too_few_sentences" in lang.off else cfg.min_sentences
    for raw in doc.text.split("\n"):
        line = raw.strip()
        if not line:
            if kept and kept[-1]:
                kept.append("")
            continue
        if cfg.remove_citations and "[" in line:
            line = _CITATION_RE.sub("", line).strip()
        if (
            (terminal_rule and (not lang.ends_sentence(line, C4_TERMINAL) or line.endswith("...")))
            or _count_words(line, cfg.min_words_per_line, seg) < cfg.min_words_per_line
            or (len(line) > cfg.max_word_length and max(map(len, seg.words(line))) > cfg.max_word_length)
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
        if sentences < min_sentences:  # count only as far as needed
            sentences += max(1, len(_SENTENCE_END_RE.findall(line)))
    if sentences < min_sentences:
        return "c4_too_few_sentences", doc.text, removed
    if not any(kept):
        return "c4_empty", doc.text, removed
    return None, "\n".join(kept).strip("\n"), removed


def fineweb_rule(doc: Doc, cfg: Any) -> str | None:
    """FineWeb's own filters (Penedo et al. 2024) as datatrove's FineWebQualityFilter."""
    lines = doc.stripped_lines
    if not lines:
        return "fineweb_empty"
    n_lines = len(lines)
    off = doc.lang.off
    if "fineweb_line_punct" not in off:
        ratio = sum(1 for line in lines if doc.lang.ends_sentence(line, FINEWEB_TERMINAL)) / n_lines
        if ratio < cfg.line_punct_thr and not (ratio == 0 and cfg.line_punct_exclude_zero):
            return "fineweb_line_punct"
    short = cfg.short_line_length
    if "fineweb_short_lines" not in off and sum(1 for line in lines if len(line) <= short) / n_lines > cfg.short_line_thr:
        return "fineweb_short_lines"
    n_chars = len(doc.text) - doc.text.count("\n")
    if n_chars and find_duplicates(lines)[1] / n_chars > cfg.char_duplicates_ratio:
        return "fineweb_char_dup"
    n_words = len(doc.words)
    if "fineweb_list_ratio" not in off and (not n_words or doc.text.count("\n") / n_words > cfg.new_line_ratio):
        return "fineweb_list_ratio"
    return None
