"""Word segmentation per language for the quality rules (FineWeb-2, Penedo et al. 2025, sec. 3).

Gopher's and FineWeb's word-based rules were written for text with spaces between words.
Each language in the quality table names one of these segmenters:

* ``whitespace``: words between spaces (English, German, French, Spanish, ...);
* ``korean``: eojeol (어절, the space-separated units of Korean) for word counts, lengths and
  n-grams, and morphemes from MeCab-ko (``python-mecab-ko`` with its dictionary wheel) for
  the stop-word rule, which counts particles and endings (은, 는, 이, 가, 을, 다, ...);
* ``sudachi``: Japanese words from SudachiPy (split mode A, the short units) and the
  ``sudachidict_small`` dictionary;
* ``jieba``: Chinese words from jieba-rs (``rjieba``);
* ``thai``: Thai words from PyThaiNLP's ``newmm`` dictionary segmenter;
* ``script``: by the text's script: Hangul -> ``korean``, Kana -> ``sudachi``, Han -> ``jieba``,
  Thai -> ``thai``, anything else -> ``whitespace`` (the fallback for languages without an
  entry).

A token without a letter or digit (``。``, ``、``, ``)``) is attached to the word before it, as
whitespace splitting leaves ``word.`` in one piece, so word counts stay comparable across
segmenters. Every segmenter loads its dictionary the first time it is used in a process and
keeps it for the life of that process (a Ray worker loads it once).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from typing import Any

from raylm.config import ConfigError

_ALNUM_RE = re.compile(r"[^\W_]")
_CHUNK = 4000  # characters per call: analysers get one line, and long lines in slices
HANGUL_SYLLABLES = "\uac00-\ud7a3"
HANGUL_JAMO = "\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\ud7b0-\ud7ff"
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
KANA = "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"
THAI = "\u0e00-\u0e7f"
_SCRIPT_RES = {name: re.compile(f"[{chars}]") for name, chars in
               (("hangul", HANGUL_SYLLABLES), ("han", HAN), ("kana", KANA), ("thai", THAI))}
_LETTER_RE = re.compile(r"[^\W\d_]")
SCRIPT_SAMPLE = 3000
"""Characters of a document its script is judged on."""


def glue_punctuation(tokens: list[str]) -> list[str]:
    """Drop whitespace tokens and attach tokens without a letter or digit to the previous word."""
    out: list[str] = []
    for tok in tokens:
        tok = tok.strip()
        if not tok:
            continue
        if out and not _ALNUM_RE.search(tok):
            out[-1] += tok
        else:
            out.append(tok)
    return out


def _chunks(text: str) -> list[str]:
    """The text's non-blank lines, long lines cut in slices an analyser accepts."""
    out = []
    for line in text.split("\n"):
        if line.strip():
            out.extend(line[i : i + _CHUNK] for i in range(0, len(line), _CHUNK))
    return out


class Segmenter:
    """Splits text into words; ``load()`` runs once, before the first ``words``."""

    name = "whitespace"
    packages: tuple[str, ...] = ()
    """Import names the segmenter needs (checked when the quality step is built)."""
    install = ""
    """What to ``pip install`` when a package is missing."""

    def __init__(self) -> None:
        self._analyse: Callable[[str], list[str]] | None = None

    def load(self) -> Callable[[str], list[str]]:
        """The analyser of one line (heavy: a dictionary)."""
        raise NotImplementedError

    def words(self, text: str) -> list[str]:
        if not self.packages:
            return text.split()
        if self._analyse is None:
            self._analyse = self.load()
        analyse = self._analyse
        tokens: list[str] = []
        for chunk in _chunks(text):
            tokens.extend(analyse(chunk))
        return glue_punctuation(tokens)


class Whitespace(Segmenter):
    name = "whitespace"


class Korean(Segmenter):
    """Eojeol as words; morphemes (MeCab-ko) only where a rule asks for them."""

    name = "korean"
    packages = ("mecab", "mecab_ko_dic")
    install = "python-mecab-ko python-mecab-ko-dic"

    def load(self) -> Callable[[str], list[str]]:
        import mecab

        return mecab.MeCab().morphs

    def words(self, text: str) -> list[str]:
        return text.split()

    def morphemes(self, text: str) -> list[str]:
        if self._analyse is None:
            self._analyse = self.load()
        out: list[str] = []
        for chunk in _chunks(text):
            out.extend(self._analyse(chunk))
        return out


class Sudachi(Segmenter):
    name = "sudachi"
    packages = ("sudachipy", "sudachidict_small")
    install = "sudachipy sudachidict-small"

    def load(self) -> Callable[[str], list[str]]:
        from sudachipy import Dictionary, SplitMode

        dictionary = Dictionary(dict="small")
        make = getattr(dictionary, "tokenizer", None) or dictionary.create  # create(): SudachiPy < 0.7
        tokenizer = make(SplitMode.A)
        return lambda line: [m.surface() for m in tokenizer.tokenize(line)]


class Jieba(Segmenter):
    name = "jieba"
    packages = ("rjieba",)
    install = "rjieba"

    def load(self) -> Callable[[str], list[str]]:
        import rjieba

        return rjieba.cut


class Thai(Segmenter):
    name = "thai"
    packages = ("pythainlp",)
    install = "pythainlp"

    def load(self) -> Callable[[str], list[str]]:
        from pythainlp.tokenize import word_tokenize

        return lambda line: word_tokenize(line, engine="newmm", keep_whitespace=False)


SEGMENTERS: dict[str, type[Segmenter]] = {
    cls.name: cls for cls in (Whitespace, Korean, Sudachi, Jieba, Thai)}
SCRIPT = "script"
"""The segmenter named by the text's script (see the module docstring)."""
NAMES = (*SEGMENTERS, SCRIPT)
_BY_SCRIPT = {"ko": "korean", "ja": "sudachi", "zh": "jieba", "th": "thai"}
_LOADED: dict[str, Segmenter] = {}


def get(name: str) -> Segmenter:
    """The process-wide segmenter ``name`` (its dictionary loads on first use)."""
    seg = _LOADED.get(name)
    if seg is None:
        if name not in SEGMENTERS:
            raise ConfigError(f"segmenter {name!r} is not one of {', '.join(NAMES)}")
        seg = _LOADED[name] = SEGMENTERS[name]()
    return seg


def for_text(name: str, text: str) -> Segmenter:
    """Segmenter ``name``, or with ``script`` the one the text's script calls for."""
    if name != SCRIPT:
        return get(name)
    return get(_BY_SCRIPT.get(guess_script_lang(text) or "", "whitespace"))


def check_available(names: set[str]) -> None:
    """Raise ``ConfigError`` naming the package to install when a segmenter cannot load."""
    classes = set(SEGMENTERS.values()) if SCRIPT in names else {SEGMENTERS[n] for n in names if n in SEGMENTERS}
    for cls in sorted(classes, key=lambda c: c.name):
        missing = [p for p in cls.packages if importlib.util.find_spec(p) is None]
        if missing:
            raise ConfigError(f"quality: segmenter {cls.name!r} needs {', '.join(missing)} "
                              f"(pip install {cls.install})")


def script_counts(text: str) -> dict[str, int]:
    """Letters of each script in the first ``SCRIPT_SAMPLE`` characters (and ``letters``)."""
    sample = text[:SCRIPT_SAMPLE]
    if sample.isascii():
        return {"letters": len(_LETTER_RE.findall(sample))}
    counts: dict[str, Any] = {name: len(regex.findall(sample)) for name, regex in _SCRIPT_RES.items()}
    counts["letters"] = len(_LETTER_RE.findall(sample))
    return counts


def guess_script_lang(text: str) -> str | None:
    """``ko``, ``ja``, ``zh`` or ``th`` when the script says so, else None (Latin and others).

    Korean text mixed with Hanja (older statutes) has Hangul particles in every clause, so a
    fifth of the letters in Hangul is Korean; any Kana makes Han text Japanese."""
    c = script_counts(text)
    letters = c["letters"]
    if not letters or len(c) == 1:
        return None
    if c["hangul"] >= 0.2 * letters:
        return "ko"
    if c["kana"] >= 0.05 * letters:
        return "ja"
    if c["han"] >= 0.5 * letters:
        return "zh"
    if c["thai"] >= 0.5 * letters:
        return "th"
    return None
