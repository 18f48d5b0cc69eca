"""The per-language table of the quality step: segmenter, stop words, rules switched off, and
thresholds fitted to each language's own distribution (FineWeb-2, Penedo et al. 2025).

The table is YAML. ``languages`` maps a language code (lid.176's: ``ko``, ``en``, ``ja``,
``zh``, ...) and ``*`` (every other language) to an entry::

    ko:
      segmenter: korean            # raylm.curate.steps.segment
      stop_words: [이, 가, 은, 는]  # compared with words, or morphemes (stop_words_on)
      stop_words_on: morphemes
      rules_off: [c4_too_few_sentences]     # rules that mean nothing for the script
      thresholds: {gopher.min_words: 41, gopher_repetition.dup_ngrams.5: 0.19}
      fit: {gopher.min_words: "..."}        # how each threshold was fitted (a note)

A threshold key is ``group.field`` of ``QualityConfig`` (``gopher.min_words``), or
``group.field.n`` for the n-gram maps. ``raylm curate fit-thresholds``
(``raylm.curate.fit_thresholds``) writes the thresholds; the rest is written by hand. The
shipped table is ``quality_thresholds.yaml`` next to this module.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from raylm.config import ConfigError
from raylm.curate.steps import segment

BUILTIN = Path(__file__).with_name("quality_thresholds.yaml")
FALLBACK = "*"
RULES_THAT_CAN_BE_OFF = (
    "gopher_mean_word_length", "gopher_stop_words", "gopher_alpha_words", "c4_terminal_punct",
    "c4_too_few_sentences", "fineweb_line_punct", "fineweb_short_lines", "fineweb_list_ratio",
)  # fmt: skip
"""Rules a table entry may switch off (by their drop reason; ``c4_terminal_punct`` is C4's
line rule ``filter_no_terminal_punct``)."""
_ENTRY_KEYS = {"segmenter", "stop_words", "stop_words_on", "rules_off", "thresholds", "fit"}


@dataclasses.dataclass(kw_only=True)
class Language:
    """One language's entry of the table."""

    code: str
    segmenter: str = "whitespace"
    stop_words: list[str] = dataclasses.field(default_factory=list)
    stop_words_on: str = "words"
    rules_off: list[str] = dataclasses.field(default_factory=list)
    thresholds: dict[str, float] = dataclasses.field(default_factory=dict)
    fit: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(kw_only=True)
class Table:
    languages: dict[str, Language]
    about: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = ""

    def entry(self, code: str) -> Language:
        return self.languages.get(code) or self.languages[FALLBACK]

    def segmenters(self) -> set[str]:
        return {lang.segmenter for lang in self.languages.values()}


def _split_key(key: str) -> tuple[str, str, int | None]:
    parts = key.split(".")
    if len(parts) == 2:
        return parts[0], parts[1], None
    if len(parts) == 3 and parts[2].isdigit():
        return parts[0], parts[1], int(parts[2])
    raise ConfigError(f"{key!r} is not 'group.field' or 'group.field.n'")


def get_value(cfg: Any, key: str) -> Any:
    group, field, n = _split_key(key)
    obj = getattr(cfg, group, None)
    if obj is None or not dataclasses.is_dataclass(obj) or field not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"{key!r} is not a threshold of the quality step")
    value = getattr(obj, field)
    if n is not None:
        if not isinstance(value, dict):
            raise ConfigError(f"{key!r}: {group}.{field} is not an n-gram map")
        return value.get(n)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key!r} is not a numeric threshold")
    return value


def set_value(cfg: Any, key: str, value: float) -> None:
    group, field, n = _split_key(key)
    obj = getattr(cfg, group)
    if n is not None:
        getattr(obj, field)[n] = float(value)
    else:
        setattr(obj, field, type(getattr(obj, field))(value))


def resolve(cfg: Any, lang: Language, fitted: bool = True) -> Any:
    """A copy of ``cfg`` with ``lang``'s thresholds, except where ``cfg`` differs from the
    defaults: a threshold set in the step's config applies to every language."""
    out = copy.deepcopy(cfg)
    if not fitted:
        return out
    default = type(cfg)()
    for key, value in lang.thresholds.items():
        if get_value(cfg, key) == get_value(default, key):
            set_value(out, key, value)
    return out


def _entry(code: str, raw: Any, where: str, config_cls: type) -> Language:
    at = f"{where}: language {code!r}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{at}: expected a mapping, got {raw!r}")
    unknown = sorted(map(str, set(raw) - _ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{at}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_ENTRY_KEYS))})")
    lang = Language(code=code, **{k: v for k, v in raw.items() if v is not None})
    if lang.segmenter not in segment.NAMES:
        raise ConfigError(f"{at}, segmenter: {lang.segmenter!r} is not one of {', '.join(segment.NAMES)}")
    if lang.stop_words_on not in ("words", "morphemes"):
        raise ConfigError(f"{at}, stop_words_on: {lang.stop_words_on!r} is not 'words' or 'morphemes'")
    if lang.stop_words_on == "morphemes" and lang.segmenter != "korean":
        raise ConfigError(f"{at}, stop_words_on: morphemes needs the korean segmenter")
    if not isinstance(lang.stop_words, list) or not all(isinstance(w, str) and w for w in lang.stop_words):
        raise ConfigError(f"{at}, stop_words: expected a list of words")
    for rule in lang.rules_off:
        if rule not in RULES_THAT_CAN_BE_OFF:
            raise ConfigError(f"{at}, rules_off: {rule!r} is not one of {', '.join(RULES_THAT_CAN_BE_OFF)}")
    if not isinstance(lang.thresholds, dict):
        raise ConfigError(f"{at}, thresholds: expected a mapping")
    cfg = config_cls()
    for key, value in lang.thresholds.items():
        try:
            get_value(cfg, key)
        except ConfigError as exc:
            raise ConfigError(f"{at}, threshold {exc}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{at}, threshold {key!r}: {value!r} is not a number")
        set_value(cfg, key, value)
    try:
        cfg.validate_thresholds()
    except ConfigError as exc:
        raise ConfigError(f"{at}, thresholds: {exc}") from None
    return lang


def load(source: str | Path, config_cls: type) -> Table:
    """Read and check a table (``builtin``: the shipped one); errors name the language and key."""
    path = BUILTIN if str(source) == "builtin" else Path(source)
    if not path.is_file():
        raise ConfigError(f"quality.table: {path} is not a file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("languages"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'languages' mapping")
    languages = {str(code): _entry(str(code), entry, str(path), config_cls)
                 for code, entry in raw["languages"].items()}
    if FALLBACK not in languages:
        raise ConfigError(f"{path}: language {FALLBACK!r} (every other language) is missing")
    return Table(languages=languages, about=raw.get("about") or {}, source=str(path))


class _Dumper(yaml.SafeDumper):
    """Lists of words on one line."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def dump(table: Table, path: str | Path) -> None:
    """Write ``table`` as YAML (what ``load`` reads)."""
    langs = {}
    for code, lang in table.languages.items():
        d = dataclasses.asdict(lang)
        d.pop("code")
        langs[code] = {k: v for k, v in d.items() if v or k == "thresholds"}
    text = yaml.dump({"about": table.about, "languages": langs}, Dumper=_Dumper, allow_unicode=True,
                     sort_keys=False, width=100)
    Path(path).write_text(text, encoding="utf-8")
