"""Heuristic quality filtering: length, Gopher quality and repetition, C4 and FineWeb rules,
per language (FineWeb-2, Penedo et al. 2025).

The rule groups run in FineWeb's order (length, Gopher repetition, Gopher quality, the Korean
rules, C4, FineWeb); the first failing rule names the drop reason (e.g. ``gopher_stop_words``,
``rep_dup_line_frac``, ``c4_curly_bracket``). The C4 group may rewrite the text by removing
lines (``c4.filter_lines``); FineWeb then judges the rewritten text.

Each document is judged as its language: the ``lang`` column (run ``langid`` before
``quality``) or ``default_lang``. The quality table (``quality_table.py``) gives that language
its segmenter (real words for Japanese, Chinese, Thai; eojeol and morphemes for Korean), its
stop words, the rules that mean nothing for its script, and thresholds fitted so that each
rule cuts the same share of that language's reference text as the English threshold cuts of
English (``raylm curate fit-thresholds``). The rules are in ``quality_rules.py``.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from raylm.config import ConfigError
from raylm.curate.steps import quality_rules as rules
from raylm.curate.steps import quality_table, segment
from raylm.curate.steps.base import RowStep, StepConfig, StepResult, replace_text
from raylm.curate.steps.quality_korean import KoreanConfig, korean_rule


def _fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}: {value} is not a fraction between 0 and 1")


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{name}: {value} must not be negative")


@dataclasses.dataclass(kw_only=True)
class LengthConfig:
    enabled: bool = True
    """Drop documents that are too short or too long."""
    min_chars: int = 50
    """Fewest characters a document may have (reason ``length_min_chars``)."""
    max_chars: int = 1_000_000
    """Most characters a document may have (reason ``length_max_chars``)."""

    def validate(self) -> None:
        _non_negative("length.min_chars", self.min_chars)
        if self.max_chars < self.min_chars:
            raise ConfigError(f"length.max_chars: {self.max_chars} is below min_chars {self.min_chars}")


@dataclasses.dataclass(kw_only=True)
class GopherConfig:
    enabled: bool = True
    """Apply the Gopher quality rules (Rae et al. 2021, appendix A)."""
    min_words: int = 50
    """Fewest words that are not just symbols, as the language's segmenter makes words
    (reason ``gopher_word_count``, also for ``max_words``)."""
    max_words: int = 100_000
    """Most words that are not just symbols."""
    min_mean_word_length: float = 3.0
    """Shortest mean word length in characters (``gopher_mean_word_length``)."""
    max_mean_word_length: float = 10.0
    """Longest mean word length."""
    max_symbol_word_ratio: float = 0.1
    """Most ``#`` per word, and most ``...``/``…`` per word (``gopher_symbol_ratio``)."""
    max_bullet_lines_ratio: float = 0.9
    """Most lines that start with a bullet (``gopher_bullet_lines``)."""
    max_ellipsis_lines_ratio: float = 0.3
    """Most lines that end with an ellipsis (``gopher_ellipsis_lines``)."""
    min_alpha_words_ratio: float = 0.8
    """Fewest words with a letter in them, any script (``gopher_alpha_words``)."""
    min_stop_words: int = 2
    """Fewest stop words of the document's language (the table's list: words compared
    case-insensitively without surrounding punctuation; Korean particles and endings among
    morphemes); 0 disables (``gopher_stop_words``)."""

    def validate(self) -> None:
        for name in ("min_words", "min_mean_word_length", "min_stop_words"):
            _non_negative(f"gopher.{name}", getattr(self, name))
        if self.max_words < self.min_words:
            raise ConfigError(f"gopher.max_words: {self.max_words} is below min_words {self.min_words}")
        if self.max_mean_word_length < self.min_mean_word_length:
            raise ConfigError("gopher.max_mean_word_length: below min_mean_word_length")
        _non_negative("gopher.max_symbol_word_ratio", self.max_symbol_word_ratio)
        for name in ("max_bullet_lines_ratio", "max_ellipsis_lines_ratio", "min_alpha_words_ratio"):
            _fraction(f"gopher.{name}", getattr(self, name))


@dataclasses.dataclass(kw_only=True)
class GopherRepetitionConfig:
    enabled: bool = True
    """Apply the Gopher repetition rules (Rae et al. 2021, appendix A, table A1)."""
    dup_line_frac: float = 0.30
    """Most lines that repeat an earlier line (``rep_dup_line_frac``)."""
    dup_para_frac: float = 0.30
    """Most paragraphs (split on blank lines) that repeat an earlier one (``rep_dup_para_frac``)."""
    dup_line_char_frac: float = 0.20
    """Most characters in repeated lines (``rep_dup_line_char_frac``)."""
    dup_para_char_frac: float = 0.20
    """Most characters in repeated paragraphs (``rep_dup_para_char_frac``)."""
    top_ngrams: dict[int, float] = dataclasses.field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    """n -> most word characters covered by the most frequent n-gram (``rep_top_{n}gram``)."""
    dup_ngrams: dict[int, float] = dataclasses.field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    """n -> most word characters inside repeated n-grams (``rep_dup_{n}gram``)."""

    def validate(self) -> None:
        for name in ("dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac"):
            _fraction(f"gopher_repetition.{name}", getattr(self, name))
        for field in ("top_ngrams", "dup_ngrams"):
            for n, threshold in getattr(self, field).items():
                if n < 1:
                    raise ConfigError(f"gopher_repetition.{field}: n-gram size {n} must be at least 1")
                _fraction(f"gopher_repetition.{field}.{n}", threshold)


@dataclasses.dataclass(kw_only=True)
class C4Config:
    enabled: bool = True
    """Apply the C4 rules (Raffel et al. 2020) as datatrove's C4QualityFilter."""
    filter_lines: bool = True
    """Write the text back without the removed lines; if false the text is left as it is and
    only the document-level decisions (lorem ipsum, curly bracket, sentences) are made."""
    filter_no_terminal_punct: bool = True
    """Remove lines that do not end in terminal punctuation (. ! ? " ' 。 ！ ？ ” ’ 」 』; in
    Korean also a final ending: 다, 요, 까, 함, ...)."""
    min_words_per_line: int = 3
    """Remove lines with fewer words (as the language's segmenter makes them)."""
    max_word_length: int = 1000
    """Remove lines with a longer word."""
    min_sentences: int = 5
    """Drop documents with fewer sentences in the kept lines (``c4_too_few_sentences``)."""
    remove_citations: bool = True
    """Remove Wikipedia-style citation marks such as ``[1]``, ``[edit]``."""
    filter_javascript: bool = True
    """Remove lines that mention "javascript"."""
    filter_policy: bool = True
    """Remove lines about terms of use, privacy or cookie policies."""
    filter_lorem_ipsum: bool = True
    """Drop documents with "lorem ipsum" in a kept line (``c4_lorem_ipsum``)."""
    filter_curly_bracket: bool = True
    """Drop documents with "{" in a kept line, i.e. code (``c4_curly_bracket``)."""

    def validate(self) -> None:
        for name in ("min_words_per_line", "min_sentences"):
            _non_negative(f"c4.{name}", getattr(self, name))
        if self.max_word_length < 1:
            raise ConfigError(f"c4.max_word_length: {self.max_word_length} must be at least 1")


@dataclasses.dataclass(kw_only=True)
class FineWebConfig:
    enabled: bool = True
    """Apply FineWeb's own rules (Penedo et al. 2024) as datatrove's FineWebQualityFilter."""
    line_punct_thr: float = 0.12
    """Fewest non-blank lines ending in punctuation (``fineweb_line_punct``)."""
    line_punct_exclude_zero: bool = False
    """Do not drop documents where no line ends in punctuation."""
    short_line_thr: float = 0.67
    """Most non-blank lines that are short (``fineweb_short_lines``)."""
    short_line_length: int = 30
    """A line this many characters long or shorter is short (fitted per language: a
    Chinese line says in 12 characters what an English one says in 30)."""
    char_duplicates_ratio: float = 0.01
    """Most characters in lines that repeat an earlier line (``fineweb_char_dup``)."""
    new_line_ratio: float = 0.3
    """Most newlines per word, i.e. list-like text (``fineweb_list_ratio``)."""

    def validate(self) -> None:
        for name in ("line_punct_thr", "short_line_thr", "char_duplicates_ratio"):
            _fraction(f"fineweb.{name}", getattr(self, name))
        _non_negative("fineweb.short_line_length", self.short_line_length)
        _non_negative("fineweb.new_line_ratio", self.new_line_ratio)


@dataclasses.dataclass(kw_only=True)
class QualityConfig(StepConfig):
    length: LengthConfig = dataclasses.field(default_factory=LengthConfig)
    """Character-length bounds (checked first)."""
    gopher_repetition: GopherRepetitionConfig = dataclasses.field(default_factory=GopherRepetitionConfig)
    """Gopher repetition rules."""
    gopher: GopherConfig = dataclasses.field(default_factory=GopherConfig)
    """Gopher quality rules."""
    korean: KoreanConfig = dataclasses.field(default_factory=KoreanConfig)
    """Rules for Korean documents only: Hangul share, jamo noise, eojeol-length outliers."""
    c4: C4Config = dataclasses.field(default_factory=C4Config)
    """C4 line filters (may rewrite the text)."""
    fineweb: FineWebConfig = dataclasses.field(default_factory=FineWebConfig)
    """FineWeb rules, on the text as C4 left it."""
    table: str = "builtin"
    """The per-language table (segmenter, stop words, rules off, fitted thresholds):
    ``builtin`` (shipped, ``steps/quality_thresholds.yaml``) or the path of one written by
    ``raylm curate fit-thresholds``. The thresholds above are English's; a threshold set here
    to anything but its default applies to every language."""
    fitted_thresholds: bool = True
    """Use the table's fitted thresholds; false judges every language by the thresholds
    above (its segmenter, stop words and switched-off rules still apply)."""
    default_lang: str = "auto"
    """Language of a document without a ``lang`` column (``langid`` has not run before) or
    with ``und``: ``auto`` reads the script (Hangul -> ko, Kana -> ja, Han -> zh, Thai -> th,
    other -> en), or a language code."""

    def validate_thresholds(self) -> None:
        for group in (self.length, self.gopher_repetition, self.gopher, self.korean, self.c4, self.fineweb):
            group.validate()

    def validate(self) -> None:
        self.validate_thresholds()
        if not self.default_lang or self.default_lang != self.default_lang.strip():
            raise ConfigError(f"default_lang: {self.default_lang!r} is not a language code or 'auto'")
        quality_table.load(self.table, type(self))


GROUPS = ("length", "gopher_repetition", "gopher", "korean", "c4", "fineweb")
"""The rule groups in the order they run."""


def run_group(group: str, doc: rules.Doc, cfg: QualityConfig) -> tuple[str | None, rules.Doc, int]:
    """(drop reason or None, the document as the group leaves it, lines it removed)."""
    if not getattr(cfg, group).enabled:
        return None, doc, 0
    if group == "c4":
        reason, text, removed = rules.c4_rule(doc, cfg.c4)
        if not reason and cfg.c4.filter_lines and text != doc.text:
            doc = rules.Doc(text, doc.lang)
        return reason, doc, removed
    if group == "korean":
        return (korean_rule(doc.text, doc.words, cfg.korean) if doc.lang.korean else None), doc, 0
    rule = {"length": rules.length_rule, "gopher_repetition": rules.repetition_rule,
            "gopher": rules.gopher_rule, "fineweb": rules.fineweb_rule}[group]
    return rule(doc, getattr(cfg, group)), doc, 0


def base_lang(code: str | None) -> str | None:
    """``zh-cn``, ``zh_Hans``, ``ko-KR`` -> ``zh``, ``zh``, ``ko``; None for none or ``und``."""
    if not code or code == "und":
        return None
    return code.replace("_", "-").split("-")[0].lower()


class Quality(RowStep):
    name = "quality"
    Config = QualityConfig

    def __init__(self, cfg: QualityConfig) -> None:
        super().__init__(cfg)
        self.cfg: QualityConfig = cfg
        self.table: quality_table.Table | None = None
        self._langs: dict[str, tuple[QualityConfig, rules.LangRules]] = {}

    @staticmethod
    def check_available(cfg: QualityConfig) -> None:
        """Every segmenter the table names must import (checked before a run starts)."""
        segment.check_available(quality_table.load(cfg.table, QualityConfig).segmenters())

    def setup(self) -> None:
        """Read the table; each segmenter loads its dictionary on first use in this process."""
        if self.table is None:
            self.table = quality_table.load(self.cfg.table, QualityConfig)

    def for_lang(self, code: str) -> tuple[QualityConfig, rules.LangRules]:
        """The thresholds and language rules for language ``code`` (built once per language)."""
        got = self._langs.get(code)
        if got is None:
            if self.table is None:
                self.setup()
            entry = self.table.entry(code)
            cfg = quality_table.resolve(self.cfg, entry, self.cfg.fitted_thresholds)
            lang = rules.LangRules(code=code, segmenter=entry.segmenter, off=frozenset(entry.rules_off),
                                   stop_words=frozenset(w.lower() for w in entry.stop_words),
                                   stop_words_on=entry.stop_words_on)
            got = self._langs[code] = (cfg, lang)
        return got

    def language(self, text: str, lang: str | None) -> str:
        code = base_lang(lang)
        if code is None:
            code = self.cfg.default_lang
            if code == "auto":
                code = segment.guess_script_lang(text) or "en"
        return code

    def check(self, text: str, lang: str | None = None) -> tuple[str | None, str, int]:
        """(drop reason or None, the text to keep, lines the C4 rules removed)."""
        cfg, lr = self.for_lang(self.language(text, lang))
        doc = rules.Doc(text, lr)
        removed = 0
        for group in GROUPS:
            reason, doc, n = run_group(group, doc, cfg)
            removed += n
            if reason:
                return reason, text, removed
        return None, doc.text, removed

    def apply(self, batch: pa.Table) -> StepResult:
        texts = batch.column("text").to_pylist()
        names = batch.column_names
        langs = batch.column("lang").to_pylist() if "lang" in names else [None] * len(texts)
        out: list[str] = []
        reasons: list[str | None] = []
        changed = lines_removed = 0
        counts: dict[str, int] = {}
        for original, lang in zip(texts, langs):
            original = original or ""
            code = self.language(original, lang)
            counts[f"judged_as_{code}"] = counts.get(f"judged_as_{code}", 0) + 1
            reason, text, removed = self.check(original, code)
            if reason is None and text != original:
                changed += 1
                lines_removed += removed
            else:
                text = original
            out.append(text)
            reasons.append(reason)
        table = replace_text(batch, out) if changed else batch
        counters = {"changed": changed, "c4_lines_removed": lines_removed, **counts}
        return StepResult(table=table, reasons=reasons, counters=counters)
