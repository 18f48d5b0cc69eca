"""``raylm curate fit-thresholds``: fit the quality table's thresholds to each language.

FineWeb-2 (Penedo et al. 2025, sec. 4) replaces English-fitted filter thresholds by ones
taken from each language's own distribution. Here, with reference text per language, the
thresholds are fitted group by group in the order the rules run (length, Gopher repetition,
Gopher quality, C4, FineWeb), each on the documents the earlier groups keep (as C4 leaves
them), so that the shares kept multiply as they do in the pipeline:

1. compute the rule's metric on every English reference document (or line) still in play
   and find the share ``q`` that the English threshold cuts (``value < threshold`` for a
   minimum, ``value > threshold`` for a maximum);
2. if the English threshold cuts at least ``min_cut`` documents, the language's threshold is
   the value that cuts at most the same share ``q`` of that language's documents in play (an
   order statistic, so that ties never make it cut more); else, for a count or a length, the
   English threshold times the ratio of the two medians, and for a fraction the English
   threshold as it is.

Each fitted threshold's method is written next to it (``fit``). Even the thresholds that do not
count words are fitted (duplicated lines and paragraphs, bullets): translation and writing
habits differ (a translation often gives two English lines one wording). FineWeb's short-line
share keeps its English value, as the short-line length it counts with is fitted. Segmenters, stop words and switched-off
rules come from the base table, which is written back with the new thresholds.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import gzip
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from raylm.config import ConfigError, from_dict
from raylm.curate.pipeline import DEFAULT_STEPS
from raylm.curate.steps import quality_rules as R
from raylm.curate.steps import quality_table
from raylm.curate.steps.quality import GROUPS, Quality, QualityConfig, run_group
from raylm.storage import InputError


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    """The threshold it fits (``group.field[.n]``)."""
    bound: str
    """``min``: a value below the threshold is cut; ``max``: above."""
    unit: str
    """``scale`` (a count or a length: scaled by medians when the quantile is undefined) or
    ``fraction`` (kept as it is then)."""
    values: Callable[[R.Doc], list[float]]
    """One value per document, or one per line for a line rule."""


def _mean_word_length(doc: R.Doc) -> list[float]:
    c = doc.content_words
    return [sum(map(len, c)) / len(c)] if c else []


def _symbol_ratio(doc: R.Doc) -> list[float]:
    n = len(doc.words)
    text = doc.text
    return [max(text.count("#"), text.count("...") + text.count("…")) / n] if n else []


def _alpha_ratio(doc: R.Doc) -> list[float]:
    n = len(doc.words)
    return [sum(1 for w in doc.words if R._ALPHA_RE.search(w)) / n] if n else []


def _sentences(doc: R.Doc) -> list[float]:
    return [float(sum(max(1, len(R._SENTENCE_END_RE.findall(line))) for line in doc.stripped_lines))]


def _line_punct(doc: R.Doc) -> list[float]:
    lines = doc.stripped_lines
    ends = sum(1 for line in lines if doc.lang.ends_sentence(line, R.FINEWEB_TERMINAL))
    return [ends / len(lines)] if lines else []


def _new_line_ratio(doc: R.Doc) -> list[float]:
    return [doc.text.count("\n") / len(doc.words)] if doc.words else []


def _line_words(doc: R.Doc) -> list[float]:
    return [float(len(doc.segmenter.words(line))) for line in doc.stripped_lines]


def _duplicates(items: list[str], total: int) -> tuple[float, float]:
    """(share of items seen before, their characters per ``total``)."""
    n, chars = R.find_duplicates(items)
    return (n / len(items) if items else 0.0), chars / max(total, 1)


def _char_dup(doc: R.Doc) -> list[float]:
    n_chars = len(doc.text) - doc.text.count("\n")
    return [R.find_duplicates(doc.stripped_lines)[1] / n_chars] if n_chars else []


def _line_share(doc: R.Doc, test: Callable[[str], bool]) -> list[float]:
    lines = doc.stripped_lines
    return [sum(1 for line in lines if test(line)) / len(lines)] if lines else []


def _stop_words(doc: R.Doc) -> list[float]:
    return [float(R.stop_word_count(doc, 10**9))] if doc.lang.stop_words else []


METRICS: tuple[Metric, ...] = (
    Metric("length.min_chars", "min", "scale", lambda d: [float(len(d.text))]),
    Metric("gopher_repetition.dup_para_frac", "max", "fraction",
           lambda d: [_duplicates(d.paragraphs, len(d.text))[0]]),
    Metric("gopher_repetition.dup_para_char_frac", "max", "fraction",
           lambda d: [_duplicates(d.paragraphs, len(d.text))[1]]),
    Metric("gopher_repetition.dup_line_frac", "max", "fraction", lambda d: [_duplicates(d.lines, len(d.text))[0]]),
    Metric("gopher_repetition.dup_line_char_frac", "max", "fraction",
           lambda d: [_duplicates(d.lines, len(d.text))[1]]),
    Metric("gopher.min_words", "min", "scale", lambda d: [float(len(d.content_words))]),
    Metric("gopher.max_words", "max", "scale", lambda d: [float(len(d.content_words))]),
    Metric("gopher.min_mean_word_length", "min", "scale", _mean_word_length),
    Metric("gopher.max_mean_word_length", "max", "scale", _mean_word_length),
    Metric("gopher.max_symbol_word_ratio", "max", "scale", _symbol_ratio),
    Metric("gopher.min_alpha_words_ratio", "min", "fraction", _alpha_ratio),
    Metric("gopher.max_bullet_lines_ratio", "max", "fraction", lambda d: _line_share(d, lambda s: s.startswith(R.BULLETS))),
    Metric("gopher.max_ellipsis_lines_ratio", "max", "fraction",
           lambda d: _line_share(d, lambda s: s.endswith(R.ELLIPSES))),
    Metric("gopher.min_stop_words", "min", "scale", _stop_words),
    *(Metric(f"gopher_repetition.top_ngrams.{n}", "max", "fraction",
             lambda d, n=n: [R.top_ngram_share(d, n)]) for n in (2, 3, 4)),
    *(Metric(f"gopher_repetition.dup_ngrams.{n}", "max", "fraction",
             lambda d, n=n: [R.dup_ngram_share(d, n)]) for n in range(5, 11)),
    Metric("c4.min_words_per_line", "min", "scale", _line_words),
    Metric("c4.min_sentences", "min", "scale", _sentences),
    Metric("fineweb.line_punct_thr", "min", "fraction", _line_punct),
    Metric("fineweb.short_line_length", "min", "scale",
           lambda d: [float(len(line)) for line in d.stripped_lines]),
    Metric("fineweb.char_duplicates_ratio", "max", "fraction", _char_dup),
    Metric("fineweb.new_line_ratio", "max", "scale", _new_line_ratio),
)
_RULE_OF_KEY = {"gopher.min_mean_word_length": "gopher_mean_word_length",
                "gopher.max_mean_word_length": "gopher_mean_word_length",
                "gopher.min_alpha_words_ratio": "gopher_alpha_words", "gopher.min_stop_words": "gopher_stop_words",
                "c4.min_sentences": "c4_too_few_sentences", "fineweb.line_punct_thr": "fineweb_line_punct",
                "fineweb.short_line_length": "fineweb_short_lines", "fineweb.new_line_ratio": "fineweb_list_ratio"}


def read_texts(path: str | Path) -> Iterator[str]:
    """The ``text`` of every record of a JSONL file (``.gz`` too) or of every such file in a
    folder; a ``.txt`` file is one document."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".gz", ".txt"))
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"fit-thresholds: {path} does not exist")
    for f in files:
        if f.suffix == ".txt":
            yield f.read_text(encoding="utf-8")
            continue
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise InputError(f"{f}:{lineno}: not a JSON object with a 'text' field") from None
                if isinstance(text, str) and text.strip():
                    yield text


def _values(metric: Metric, docs: list[R.Doc]) -> np.ndarray:
    return np.asarray([v for d in docs for v in metric.values(d)], dtype=np.float64)


def _survivors(group: str, docs: list[R.Doc], cfg: QualityConfig) -> list[R.Doc]:
    """The documents that pass ``group`` (as C4 leaves them)."""
    out = []
    for doc in docs:
        reason, doc, _ = run_group(group, doc, cfg)
        if reason is None:
            out.append(doc)
    return out


def fit_one(metric: Metric, english: np.ndarray, other: np.ndarray, threshold: float,
            min_cut: int) -> tuple[float | None, str]:
    """(the language's threshold or None to keep English's, how it was found)."""
    if not len(english) or not len(other):
        return None, "kept: no values"
    cut = int((english < threshold).sum() if metric.bound == "min" else (english > threshold).sum())
    q = cut / len(english)
    if cut >= min_cut and cut < len(english):
        k = math.floor(q * len(other))
        ordered = np.sort(other)
        value = ordered[k] if metric.bound == "min" else ordered[len(other) - 1 - k]
        return float(value), f"quantile: en cuts {q:.3f} ({cut}/{len(english)})"
    med_en, med = float(np.median(english)), float(np.median(other))
    if metric.unit == "scale" and med_en > 0 and med > 0:
        return threshold * med / med_en, f"median ratio {med / med_en:.3f} (en cuts {cut}/{len(english)})"
    return None, f"kept: en cuts {cut}/{len(english)}"


def _rounded(value: float, default: Any) -> float:
    if isinstance(default, int) and not isinstance(default, bool):
        return int(round(value))
    return round(value, 4)


def fit(references: dict[str, str], base: str = "builtin", min_cut: int = 5, options: dict | None = None,
        quiet: bool = False) -> quality_table.Table:
    """The base table with thresholds fitted for every language in ``references`` (which
    must include ``en``). ``options``: the quality step's config whose thresholds are English's
    (default: the default pipeline's)."""
    if "en" not in references:
        raise ConfigError("fit-thresholds: an English reference (--reference en=PATH) is needed")
    table = quality_table.load(base, QualityConfig)
    if options is None:
        options = next(item["quality"] for item in DEFAULT_STEPS if isinstance(item, dict) and "quality" in item)
    english_cfg = from_dict(QualityConfig, {**options, "table": base, "fitted_thresholds": False}, "quality")
    step = Quality(english_cfg)
    texts = {lang: list(read_texts(path)) for lang, path in references.items()}
    # English's documents as each group sees them (the survivors of the groups before it)
    english: dict[str, list[R.Doc]] = {}
    docs = [R.Doc(t, step.for_lang("en")[1]) for t in texts["en"]]
    for group in GROUPS:
        english[group] = docs
        docs = _survivors(group, docs, english_cfg)
    english_kept = len(docs)
    by_group: dict[str, list[Metric]] = {}
    for m in METRICS:
        by_group.setdefault(m.key.split(".")[0], []).append(m)
    for lang in references:
        if lang == "en":
            continue
        entry = table.languages.get(lang)
        if entry is None:
            raise ConfigError(f"fit-thresholds: language {lang!r} has no entry in {table.source}")
        entry.thresholds, entry.fit = {}, {}
        cfg = copy.deepcopy(english_cfg)
        docs = [R.Doc(t, step.for_lang(lang)[1]) for t in texts[lang]]
        for group in GROUPS:
            for m in by_group.get(group, []):
                rule = _RULE_OF_KEY.get(m.key)
                if rule in entry.rules_off or (m.key == "gopher.min_stop_words" and not entry.stop_words):
                    entry.fit[m.key] = "off for this language"
                    continue
                en_threshold = quality_table.get_value(english_cfg, m.key)
                value, how = fit_one(m, _values(m, english[group]), _values(m, docs), en_threshold, min_cut)
                if value is not None:
                    value = _rounded(value, en_threshold)
                    entry.thresholds[m.key] = value
                    quality_table.set_value(cfg, m.key, value)
                entry.fit[m.key] = how
            docs = _survivors(group, docs, cfg)
        if not quiet:
            print(f"{lang}: {len(entry.thresholds)} thresholds fitted; of the reference {len(docs)}/{len(texts[lang])} "
                  f"kept (English: {english_kept}/{len(texts['en'])})")
    table.about = {
        "what": "Per-language settings of the quality step; thresholds fitted by raylm curate fit-thresholds "
                "(raylm/curate/fit_thresholds.py): in the order the rules run, each cuts the share of the "
                "language's reference that the English threshold cuts of the English reference.",
        "fitted": dt.date.today().isoformat(),
        "english_thresholds": options,
        "reference": {lang: {"path": str(path), "documents": len(texts[lang])} for lang, path in references.items()},
        "min_cut": min_cut,
    }
    return table


def parse_references(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        lang, sep, path = item.partition("=")
        if not sep or not lang or not path:
            raise ConfigError(f"--reference {item!r}: expected LANG=PATH, e.g. ko=data/ko.jsonl.gz")
        out[lang] = path
    return out
