"""PII masking: e-mail addresses, phone numbers, IP addresses, card numbers and Korean RRNs.

Each kind is found by a precompiled regex and then checked, so that numbers that only look
like PII stay: IPv4 octets must be 0-255 and not part of a longer dotted run (``1.2.3.4.5``,
``v10.0.0.1``), IPv6 candidates must parse with ``ipaddress``, card numbers must pass the
Luhn checksum (and not be an EAN-13/ISBN-13 barcode), Korean resident registration numbers
(주민등록번호) must carry a real birth date, a gender digit 1-8 and, unless switched off, the
official checksum. Numbers glued to ASCII letters or digits (hashes, identifiers), numbers
that start a URL path segment (``/orders/01012345678``) and numbers that continue a dashed
or dotted run (ISBN ``978-3-16-148410-0``, dates, versions) are left alone. Korean text may
touch a number directly (``010-1234-5678로``): only ASCII letters count as a boundary.

When two kinds overlap, the first of e-mail, KRRN, card, IP, phone wins. Matches are replaced
by a placeholder per kind (mode ``mask``) or deleted (mode ``remove``).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
from typing import Literal

import pyarrow as pa

from raylm.config import ConfigError
from raylm.curate.steps.base import RowStep, StepConfig, StepResult, replace_text, set_column

KINDS = ("email", "phone", "ip", "card", "krrn")
DEFAULT_PLACEHOLDERS = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "ip": "<IP>",
    "card": "<CARD>",
    "krrn": "<KRRN>",
}
# Overlapping matches are resolved in this order.
_PRIORITY = ("email", "krrn", "card", "ip", "phone")


@dataclasses.dataclass(kw_only=True)
class PIIConfig(StepConfig):
    mode: Literal["mask", "remove"] = "mask"
    """``mask`` replaces each match with the placeholder of its kind; ``remove`` deletes it."""
    kinds: list[str] = dataclasses.field(default_factory=lambda: list(KINDS))
    """Which kinds to look for, any of ``email``, ``phone``, ``ip``, ``card``, ``krrn``."""
    placeholders: dict[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_PLACEHOLDERS))
    """Kind -> replacement text in mask mode; a kind left out keeps its default (``<EMAIL>``…)."""
    krrn_checksum: bool = True
    """Require the RRN check digit. Numbers issued since October 2020 have none: set False to
    catch them too (a dash between the birth date and the rest is then required)."""

    def validate(self) -> None:
        if self.mode not in ("mask", "remove"):
            raise ConfigError(f"mode: {self.mode!r} is not one of ['mask', 'remove']")
        for kind in self.kinds:
            if kind not in KINDS:
                raise ConfigError(f"kinds: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        for kind in self.placeholders:
            if kind not in KINDS:
                raise ConfigError(f"placeholders: unknown kind {kind!r} (known: {', '.join(KINDS)})")


# --- regexes -----------------------------------------------------------------------------------
# Boundaries for numbers: not glued to ASCII letters/digits/underscore, not the start of a URL
# path segment, and not the continuation of a dashed/dotted/slashed digit run. The "before"
# check is written after a match's first character (``.`` stands for it) so that each pattern
# starts with a character class, which ``re`` scans for quickly, and not with a lookbehind.
_B1 = r"(?<![0-9A-Za-z_/].)(?<![0-9][-./].)"
_NUM_AFTER = r"(?![0-9A-Za-z_])(?![-./][0-9])"

_PRECHECK_RE = re.compile(r"[0-9@]")
# Every phone, IPv4, card and RRN match lies inside a run of digits and separators of at least
# 7 characters; the kind patterns are only tried inside such runs, found in one scan.
_CLUSTER_RE = re.compile(r"[0-9+(][0-9 ().+\-]{5,}[0-9]")

_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9_%+\-])"
    r"[A-Za-z0-9_%+\-](?:[A-Za-z0-9._%+\-]{0,62}[A-Za-z0-9_%+\-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}([A-Za-z]{2,24})"
    r"(?![A-Za-z0-9\-])(?!\.[A-Za-z0-9])"
)
# "icon@2x.png" is a file name, not an address.
_FILE_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "pdf", "js", "css", "py"})

_PHONE_RE = re.compile(
    r"(?:"
    # international: +CC then 1-4 digit groups, an optional (area) group; digits checked below
    r"\+" + _B1 + r"[1-9][0-9]{0,2}(?:[ \-.]?\(0\))?(?:[ \-.]?\(?[0-9]{1,4}\)?)(?:[ \-.]?[0-9]{1,4}){1,5}"
    # Korean mobile: 010-1234-5678, 010 1234 5678, 01012345678 (one separator style)
    r"|0" + _B1 + r"1[016789](?P<ms>[-. ]?)[0-9]{3,4}(?P=ms)[0-9]{4}"
    # Korean landline: 02-123-4567, 031-1234-5678, (02) 123-4567, 070-1234-5678
    r"|0" + _B1 + r"(?:2|[3-6][1-5]|70)[-. ]?[0-9]{3,4}[-. ][0-9]{4}"
    r"|\(" + _B1 + r"0(?:2|[3-6][1-5]|70)\)[ ]?[0-9]{3,4}[-. ][0-9]{4}"
    # Korean nationwide representative numbers: 1588-1234, 1600-1234, 1899-1234
    r"|(?P<rep>1" + _B1 + r"[568][0-9]{2})-(?P<rep2>[0-9]{4})"
    r")" + _NUM_AFTER
)

# A dotted quad; octets 0-255 without leading zeros are checked in code.
_IPV4_RE = re.compile(
    r"[0-9](?<![0-9A-Za-z_.].)" + r"[0-9]{0,2}(?:\.[0-9]{1,3}){3}" + r"(?![0-9A-Za-z_])(?!\.[0-9])"
)
# Words that make a dotted quad a version or section number ("version 1.2.3.4", "§ 3.1.2.1").
_VERSION_CONTEXT_RE = re.compile(
    r"(?i)(?<![A-Za-z])(?:version|ver\.?|v|release|build|rev\.?|section|sec\.?|§|chapter|fig\.?|figure|table|"
    r"clause|버전|절|조)\s*[:=#]?\s*$"
)
# Candidates only; ``ipaddress`` decides. Not preceded by "hex:" so a match never starts inside
# a longer colon run (the whole run is tried and rejected instead).
_IPV6_RE = re.compile(
    r"(?<![0-9A-Za-z_.])(?<![0-9A-Fa-f:]:)"
    r"(?:[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){2,7}(?:(?:\.[0-9]{1,3}){3})?"
    r"(?![0-9A-Za-z_:])(?!\.[0-9])"
)
# Where to look for IPv6 addresses and e-mails: scanning for ":" or "@" is much faster than
# trying a pattern that may start at any hex digit or letter.
_IPV6_HINT_RE = re.compile(r":[0-9A-Fa-f]{0,4}:")
_HEX = frozenset("0123456789abcdefABCDEF")
_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")

_CARD_RE = re.compile(
    r"[0-9]" + _B1 + r"(?:[0-9]{12,18}"
    r"|[0-9]{3}(?P<cs>[ \-])[0-9]{4,6}(?:(?P=cs)[0-9]{3,5}){1,3})" + _NUM_AFTER
)

_KRRN_RE = re.compile(
    r"([0-9]" + _B1 + r"[0-9])(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])(-?)([1-8])([0-9]{6})" + _NUM_AFTER
)
_KRRN_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)


# --- checks ------------------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn (mod 10) checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _ean13_ok(digits: str) -> bool:
    total = sum((ord(c) - 48) * (3 if i % 2 else 1) for i, c in enumerate(digits[:12]))
    return (10 - total % 10) % 10 == ord(digits[12]) - 48


def is_card(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    if not 13 <= len(digits) <= 19 or digits[0] not in "2345679":
        return False  # no issuer starts with 0/1/8 (1 is airlines; 13-digit epoch-ms stamps start with 1)
    if digits.count(digits[0]) == len(digits):
        return False
    if len(digits) == 13 and _ean13_ok(digits):
        return False  # an EAN-13 / ISBN-13 barcode
    return luhn_ok(digits)


def krrn_checksum_ok(digits: str) -> bool:
    """The RRN check digit: (11 - sum(d_i * w_i) % 11) % 10 over the first 12 digits."""
    total = sum((ord(c) - 48) * w for c, w in zip(digits[:12], _KRRN_WEIGHTS, strict=True))
    check = ord(digits[12]) - 48
    if (11 - total % 11) % 10 == check:
        return True
    # Foreigner registration numbers (gender digit 5-8) issued before 2020 used 13 in place of 11.
    return digits[6] in "5678" and (13 - total % 11) % 10 == check


def is_krrn(m: re.Match, checksum: bool) -> bool:
    yy, mm, dd, dash, gender, rest = m.groups()
    century = 1900 if gender in "1256" else 2000
    try:
        datetime.date(century + int(yy), int(mm), int(dd))
    except ValueError:
        return False
    if checksum:
        return krrn_checksum_ok(yy + mm + dd + gender + rest)
    return bool(dash)  # without the checksum a bare 13-digit run is too likely something else


def _phone_ok(m: re.Match) -> bool:
    s = m.group(0)
    if s[0] == "+":
        n = sum(c.isdigit() for c in s)
        return 8 <= n <= 15
    rep = m.group("rep")
    if rep is not None:
        a, b = int(rep), int(m.group("rep2"))
        return not (1500 <= b <= 2100 and b > a)  # "1600-1700" is a range of years
    return True


def _ipv4_ok(text: str, m: re.Match) -> bool:
    for octet in m.group(0).split("."):
        if int(octet) > 255 or (octet[0] == "0" and len(octet) > 1):
            return False
    return _VERSION_CONTEXT_RE.search(text, max(0, m.start() - 16), m.start()) is None


def _ipv6_ok(s: str) -> bool:
    if "::" not in s and s.count(":") != 7:
        return False
    if sum(c not in ":." for c in s) < 4:
        return False  # "::1", "a::b" (C++ scopes): too little to be worth masking
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _in_clusters(pattern: re.Pattern, text: str, clusters: list[tuple[int, int]]):
    # ``endpos`` is two characters past the run so that the lookaheads see what follows it; a
    # lookbehind sees the text before ``pos``.
    for start, end in clusters:
        yield from pattern.finditer(text, start, end)


def _find_emails(text: str) -> list[re.Match]:
    found: list[re.Match] = []
    at = text.find("@")
    while at >= 0:
        start = at
        while start > 0 and at - start <= 64 and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        while start < at and text[start] == ".":
            start += 1  # "...john@example.com"
        m = _EMAIL_RE.match(text, start) if start < at else None
        if m is not None and m.group(1).lower() not in _FILE_TLDS:
            found.append(m)
            at = text.find("@", m.end())
        else:
            at = text.find("@", at + 1)
    return found


def _find_ipv6(text: str) -> list[re.Match]:
    found: list[re.Match] = []
    if "::" not in text and text.count(":") < 7:
        return found  # an IPv6 address has "::" or seven colons
    hint = _IPV6_HINT_RE.search(text)
    while hint is not None:
        start = hint.start()
        while start > 0 and hint.start() - start < 4 and text[start - 1] in _HEX:
            start -= 1
        m = _IPV6_RE.match(text, start)
        if m is not None and _ipv6_ok(m.group(0)):
            found.append(m)
            hint = _IPV6_HINT_RE.search(text, m.end())
        else:
            hint = _IPV6_HINT_RE.search(text, hint.start() + 1)
    return found


# --- the step ----------------------------------------------------------------------------------


class PII(RowStep):
    name = "pii"
    Config = PIIConfig

    def __init__(self, cfg: PIIConfig) -> None:
        super().__init__(cfg)
        self.cfg: PIIConfig = cfg
        self.kinds = [k for k in _PRIORITY if k in cfg.kinds]
        self.placeholders = {**DEFAULT_PLACEHOLDERS, **cfg.placeholders}

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping ``(start, end, kind)`` spans of PII in ``text``, sorted by start."""
        if not _PRECHECK_RE.search(text):
            return []
        spans: list[tuple[int, int, str]] = []

        def add(start: int, end: int, kind: str) -> None:
            for s, e, _ in spans:
                if start < e and s < end:
                    return
            spans.append((start, end, kind))

        n = len(text)
        clusters = [(m.start(), min(m.end() + 2, n)) for m in _CLUSTER_RE.finditer(text)]
        for kind in self.kinds:
            if kind == "email":
                for m in _find_emails(text):
                    add(m.start(), m.end(), kind)
            elif kind == "krrn":
                for m in _in_clusters(_KRRN_RE, text, clusters):
                    if is_krrn(m, self.cfg.krrn_checksum):
                        add(m.start(), m.end(), kind)
            elif kind == "card":
                for m in _in_clusters(_CARD_RE, text, clusters):
                    if is_card(m.group(0)):
                        add(m.start(), m.end(), kind)
            elif kind == "ip":
                for m in _find_ipv6(text):  # first, so "::ffff:192.168.0.1" is one address
                    add(m.start(), m.end(), kind)
                for m in _in_clusters(_IPV4_RE, text, clusters):
                    if _ipv4_ok(text, m):
                        add(m.start(), m.end(), kind)
            elif kind == "phone":
                for m in _in_clusters(_PHONE_RE, text, clusters):
                    if _phone_ok(m):
                        add(m.start(), m.end(), kind)
        spans.sort()
        return spans

    def apply(self, batch: pa.Table) -> StepResult:
        texts = batch.column("text").to_pylist()
        remove = self.cfg.mode == "remove"
        counters = dict.fromkeys(KINDS, 0)
        out: list[str] = []
        per_doc: list[int] = []
        changed = False
        for text in texts:
            text = text or ""
            spans = self.find(text) if self.kinds else []
            if not spans:
                out.append(text)
                per_doc.append(0)
                continue
            parts: list[str] = []
            pos = 0
            for start, end, kind in spans:
                parts.append(text[pos:start])
                if not remove:
                    parts.append(self.placeholders[kind])
                pos = end
                counters[kind] += 1
            parts.append(text[pos:])
            out.append("".join(parts))
            per_doc.append(len(spans))
            changed = True
        table = replace_text(batch, out) if changed else batch
        table = set_column(table, "pii_count", per_doc, type=pa.int32())
        return StepResult(table=table, counters=counters)
