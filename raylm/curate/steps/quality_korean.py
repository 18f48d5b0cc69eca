"""Quality rules for Korean documents only (``lang == "ko"``), run after the Gopher rules.

* ``ko_hangul_share``: too few eojeol are Korean, i.e. have a Hangul syllable or a Hanja in
  them, of the eojeol with a letter. Counted by eojeol, not by letters, so that Korean prose
  with English terms and commands (``Python의 dict 타입은``: a third of the letters are
  Hangul, two thirds of the eojeol) is Korean, and a page of English under a ``ko`` label is
  not. Hanja count as Korean: statutes and older prose mix Hangul and Hanja (國漢文混用, e.g.
  the 1948 Constitution), and such text is Korean, not Chinese.
* ``ko_jamo_noise``: too many bare jamo, conjoining (U+1100-11FF, what NFKC turns
  compatibility jamo into) or compatibility (U+3130-318F: ㅋㅋㅋ, ㅠㅠ, ㅇㅇ): chat noise and
  broken decoding rather than prose.
* ``ko_long_eojeol``: too many Korean eojeol longer than any real one (typically text whose spaces
  were lost), measured in Hangul and Hanja characters so punctuation and numbers do not count.
"""

from __future__ import annotations

import dataclasses
import re

from raylm.config import ConfigError
from raylm.curate.steps import segment

_SYLLABLE_RE = re.compile(f"[{segment.HANGUL_SYLLABLES}]")
_JAMO_RE = re.compile(f"[{segment.HANGUL_JAMO}]")
_LETTER_RE = re.compile(r"[^\W\d_]")
_KOREAN_CHARS_RE = re.compile(f"[{segment.HANGUL_SYLLABLES}{segment.HAN}]")


@dataclasses.dataclass(kw_only=True)
class KoreanConfig:
    enabled: bool = True
    """Apply these rules to documents whose language is ``ko``."""
    min_korean_share: float = 0.3
    """Fewest eojeol with Hangul or Hanja in them, of the eojeol with a letter
    (``ko_hangul_share``; LibreOffice's Korean help pages full of menu paths and code: 0.31 at
    least)."""
    max_jamo_ratio: float = 0.02
    """Most bare jamo per Hangul character, syllables and jamo (``ko_jamo_noise``)."""
    long_eojeol: int = 16
    """An eojeol with more Hangul/Hanja characters than this is an outlier."""
    max_long_eojeol_ratio: float = 0.05
    """Most eojeol that are outliers (``ko_long_eojeol``)."""

    def validate(self) -> None:
        for name in ("min_korean_share", "max_jamo_ratio", "max_long_eojeol_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"korean.{name}: {value} is not a fraction between 0 and 1")
        if self.long_eojeol < 1:
            raise ConfigError(f"korean.long_eojeol: {self.long_eojeol} must be at least 1")


def korean_rule(text: str, eojeol: list[str], cfg: KoreanConfig) -> str | None:
    with_letters = [w for w in eojeol if _LETTER_RE.search(w)]
    korean = [w for w in with_letters if _KOREAN_CHARS_RE.search(w)]
    if with_letters and len(korean) / len(with_letters) < cfg.min_korean_share:
        return "ko_hangul_share"
    syllables = len(_SYLLABLE_RE.findall(text))
    jamo = len(_JAMO_RE.findall(text))
    if jamo and jamo / (syllables + jamo) > cfg.max_jamo_ratio:
        return "ko_jamo_noise"
    if korean:
        limit = cfg.long_eojeol
        long = sum(1 for w in korean if len(w) > limit and len(_KOREAN_CHARS_RE.findall(w)) > limit)
        if long / len(korean) > cfg.max_long_eojeol_ratio:
            return "ko_long_eojeol"
    return None
