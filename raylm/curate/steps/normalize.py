"""Text normalisation: HTML to text, Unicode form, control characters, whitespace.

Runs first in a pipeline so that every later step (quality rules, language id, dedup hashes)
sees the same canonical text. Each part can be switched off. The order is fixed: HTML is
converted first (entities may produce any character), then control characters go, then the
Unicode form is applied (NFKC can produce spaces), and whitespace is tidied last.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from html.parser import HTMLParser
from typing import Literal

import pyarrow as pa

from raylm.config import ConfigError
from raylm.curate.steps.base import RowStep, StepConfig, StepResult, replace_text

UNICODE_FORMS = ("NFC", "NFKC", "none")


@dataclasses.dataclass(kw_only=True)
class NormalizeConfig(StepConfig):
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    """Unicode normal form. NFKC also folds compatibility characters (fullwidth ``ＡＢＣ`` to
    ``ABC``, ``①`` to ``1``); Hangul compatibility jamo (``ㅋㅋ``) are kept as they are."""
    html: bool = True
    """Convert documents that contain HTML tags to plain text (scripts, styles and ``<head>``
    dropped, block tags to newlines, entities unescaped). Plain text is left alone."""
    control_chars: bool = True
    """Remove C0/C1 control characters (``\\r\\n`` and ``\\r`` become ``\\n``; ``\\n`` and ``\\t``
    stay) and the zero-width characters U+200B..U+200D and U+FEFF."""
    whitespace: bool = True
    """Collapse runs of spaces/tabs into one space, strip each line, collapse three or more
    newlines into two and strip the document."""
    drop_empty: bool = True
    """Drop documents that are empty after normalisation (reason ``empty``)."""

    def validate(self) -> None:
        if self.unicode_form not in UNICODE_FORMS:
            raise ConfigError(f"unicode_form: {self.unicode_form!r} is not one of {list(UNICODE_FORMS)}")


# --- HTML ------------------------------------------------------------------------------------

_SKIP_TAGS = frozenset({"script", "style", "noscript", "head", "template"})
_PARAGRAPH_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table"})
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "body", "br", "dd", "div", "dl", "dt", "fieldset", "figcaption",
        "figure", "footer", "form", "header", "hr", "html", "li", "main", "nav", "ol", "section",
        "title", "tr", "ul", "caption", "tbody", "thead", "tfoot", "option", "details", "summary",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})
_KNOWN_TAGS = (
    "html|head|body|title|meta|link|script|style|noscript|p|div|span|br|hr|a|b|i|u|em|strong|small|"
    "img|ul|ol|li|dl|dt|dd|table|thead|tbody|tr|td|th|h[1-6]|pre|code|blockquote|section|article|nav|"
    "header|footer|main|aside|figure|figcaption|form|input|button|label|select|option|textarea|"
    "iframe|sup|sub|font|center|template|svg|abbr|cite|q|s|strike|del|ins|mark|time|video|audio|source"
)
# A tag we know, opening or closing, with attributes: "a<b and c>d" or "x < y" is not HTML.
_TAG_RE = re.compile(rf"</?(?:{_KNOWN_TAGS})(?=[\s/>])[^<>]*>", re.IGNORECASE)
_DOC_RE = re.compile(r"<!doctype\s+html|<html[\s>]|<!--", re.IGNORECASE)
_HTML_SPACE_RE = re.compile(r"\s+")


def looks_like_html(text: str) -> bool:
    """True when ``text`` has a doctype/comment or at least two known HTML tags."""
    if "<" not in text:
        return False
    if _DOC_RE.search(text):
        return True
    tags = _TAG_RE.finditer(text)
    return next(tags, None) is not None and next(tags, None) is not None


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip: dict[str, int] = {}
        self.pre = 0
        self.newlines = 0

    def _skipping(self) -> bool:
        return any(self.skip.values())

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _SKIP_TAGS:
            self.skip[tag] = self.skip.get(tag, 0) + 1
        elif tag == "body":
            self.skip["head"] = 0  # an unclosed <head> ends where <body> starts
        if tag == "pre":
            self.pre += 1
        self._break(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self._break(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self.skip.get(tag):
            self.skip[tag] -= 1
        if tag == "pre" and self.pre:
            self.pre -= 1
        self._break(tag)

    def _break(self, tag: str) -> None:
        # Breaks between two runs of text do not add up: </div><ul><li> is one newline.
        if tag in _PARAGRAPH_TAGS:
            self.newlines = 2
        elif tag in _BLOCK_TAGS:
            self.newlines = max(self.newlines, 1)
        elif tag in _CELL_TAGS and not self.newlines:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if self._skipping():
            return
        if not self.pre:
            data = _HTML_SPACE_RE.sub(" ", data)
            if data == " " and self.newlines:
                return
        if self.newlines:
            if self.parts:
                self.parts.append("\n" * self.newlines)
            self.newlines = 0
        self.parts.append(data)


def html_to_text(text: str) -> str:
    """Visible text of an HTML document, block elements on their own lines."""
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


# --- characters and whitespace ------------------------------------------------------------------

_NEWLINE_RE = re.compile(r"\r\n?")
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200d\ufeff]")
_COMPAT_JAMO_RE = re.compile("([\u3131-\u318e]+)")
_BLANK_LINES_RE = re.compile(r"\n{3,}")


def unicode_normalize(text: str, form: str) -> str:
    if form == "none" or unicodedata.is_normalized(form, text):
        return text
    if form == "NFKC" and _COMPAT_JAMO_RE.search(text):
        # NFKC turns compatibility jamo (ㄱ, ㅋ) into conjoining jamo that render and compare
        # differently; keep them and normalise the text around them.
        parts = _COMPAT_JAMO_RE.split(text)
        return "".join(p if i % 2 else unicodedata.normalize(form, p) for i, p in enumerate(parts))
    return unicodedata.normalize(form, text)


def remove_control_chars(text: str) -> str:
    if "\r" in text:
        text = _NEWLINE_RE.sub("\n", text)
    return _CONTROL_RE.sub("", text)


def _tidy_line(line: str) -> str:
    # str.split() collapses and strips any Unicode whitespace, faster than a regex; the
    # leading indentation is kept, since it carries meaning in code, lists and verse.
    body = " ".join(line.split())
    if not body or line[0] not in " \t":
        return body
    return line[: len(line) - len(line.lstrip(" \t"))] + body


def normalize_whitespace(text: str) -> str:
    text = "\n".join([_tidy_line(line) for line in text.split("\n")])
    if "\n\n\n" in text:
        text = _BLANK_LINES_RE.sub("\n\n", text)
    return text.strip()


class Normalize(RowStep):
    name = "normalize"
    Config = NormalizeConfig

    def __init__(self, cfg: NormalizeConfig) -> None:
        super().__init__(cfg)
        self.cfg: NormalizeConfig = cfg

    def normalize(self, text: str) -> tuple[str, bool]:
        """The normalised text and whether it was converted from HTML."""
        cfg = self.cfg
        was_html = cfg.html and looks_like_html(text)
        if was_html:
            text = html_to_text(text)
        if cfg.control_chars:
            text = remove_control_chars(text)
        text = unicode_normalize(text, cfg.unicode_form)
        if cfg.whitespace:
            text = normalize_whitespace(text)
        return text, was_html

    def apply(self, batch: pa.Table) -> StepResult:
        texts = batch.column("text").to_pylist()
        out: list[str] = []
        reasons: list[str | None] = []
        changed = html = 0
        for text in texts:
            original = text or ""
            new, was_html = self.normalize(original)
            changed += new != original
            html += was_html
            out.append(new)
            reasons.append("empty" if self.cfg.drop_empty and not new.strip() else None)
        table = replace_text(batch, out) if changed else batch
        return StepResult(table=table, reasons=reasons, counters={"changed": changed, "html": html})
