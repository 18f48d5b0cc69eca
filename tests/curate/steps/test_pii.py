"""The PII step: each kind masked or removed, checksums honoured, look-alikes left alone."""

from __future__ import annotations

import pyarrow as pa
import pytest

from raylm.config import ConfigError, from_dict
from raylm.curate.steps import step_class
from raylm.curate.steps.pii import PII, PIIConfig, luhn_ok

KRRN_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)


def krrn(first12: str) -> str:
    """A resident registration number with a correct check digit, as YYMMDD-GNNNNNN."""
    check = (11 - sum(int(d) * w for d, w in zip(first12, KRRN_WEIGHTS, strict=True)) % 11) % 10
    return f"{first12[:6]}-{first12[6:]}{check}"


def bad_check(number: str) -> str:
    return number[:-1] + str((int(number[-1]) + 1) % 10)


def run(texts: list[str], cfg: PIIConfig | None = None):
    batch = pa.table(
        {"id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, type=pa.large_string())}
    )
    result = PII(cfg or PIIConfig()).apply(batch)
    assert result.table.num_rows == len(texts)
    assert result.reasons is None  # PII never drops a document
    return result


def masked(text: str, cfg: PIIConfig | None = None) -> str:
    return run([text], cfg).table.column("text")[0].as_py()


def test_registry_builds_the_step():
    assert step_class("pii") is PII


# --- each kind is found ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mail john.doe+news@example.co.kr today.", "Mail <EMAIL> today."),
        ("문의는 kim_01@naver.com으로 주세요", "문의는 <EMAIL>으로 주세요"),
        ("Call +82 10-1234-5678 now", "Call <PHONE> now"),
        ("Call +1 (415) 555-2671.", "Call <PHONE>."),
        ("London office: +44 20 7946 0958", "London office: <PHONE>"),
        ("휴대폰 010-1234-5678로 연락", "휴대폰 <PHONE>로 연락"),
        ("휴대폰 01012345678", "휴대폰 <PHONE>"),
        ("서울 02-123-4567, 경기 031-123-4567", "서울 <PHONE>, 경기 <PHONE>"),
        ("대표번호 1588-1234", "대표번호 <PHONE>"),
        ("server 192.168.0.1.", "server <IP>."),
        ("host 2001:db8::8a2e:370:7334 is up", "host <IP> is up"),
        ("mapped ::ffff:192.168.0.1 here", "mapped <IP> here"),
        ("visa 4111 1111 1111 1111 ok", "visa <CARD> ok"),
        ("visa 4111-1111-1111-1111 ok", "visa <CARD> ok"),
        ("amex 378282246310005", "amex <CARD>"),
        (f"주민번호 {krrn('900101123456')}입니다", "주민번호 <KRRN>입니다"),
        (f"외국인 {krrn('010203512345')}", "외국인 <KRRN>"),  # gender digit 5, born 1901
    ],
)
def test_each_kind_is_masked(text, expected):
    assert masked(text) == expected


def test_counters_and_pii_count_per_kind():
    texts = [
        "a@example.com and b@example.org, 010-1234-5678",
        "nothing here at all",
        f"10.0.0.1 4111111111111111 {krrn('850615234567')}",
    ]
    result = run(texts)
    assert dict(result.counters) == {"email": 2, "phone": 1, "ip": 1, "card": 1, "krrn": 1}
    col = result.table.column("pii_count")
    assert col.type == pa.int32()
    assert col.to_pylist() == [3, 0, 3]
    assert result.table.column("text")[1].as_py() == "nothing here at all"


def test_remove_mode_deletes_the_match():
    assert masked("mail: a@example.com!", PIIConfig(mode="remove")) == "mail: !"
    assert masked("tel 010-1234-5678 ip 8.8.8.8.", PIIConfig(mode="remove")) == "tel  ip ."


def test_custom_placeholder_and_kinds_subset():
    cfg = PIIConfig(kinds=["email"], placeholders={"email": "[메일]"})
    assert masked("a@example.com 010-1234-5678", cfg) == "[메일] 010-1234-5678"
    result = run(["a@example.com 010-1234-5678"], cfg)
    assert result.counters["phone"] == 0 and result.counters["email"] == 1


# --- checksums ---------------------------------------------------------------------------------


def test_card_needs_a_valid_luhn_checksum():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert masked("card 4111111111111111") == "card <CARD>"
    assert masked("card 4111111111111112") == "card 4111111111111112"
    assert masked("card 5500 0000 0000 0004") == "card <CARD>"
    assert masked("card 5500 0000 0000 0005") == "card 5500 0000 0000 0005"


def test_krrn_needs_a_valid_checksum_unless_switched_off():
    good = krrn("900101123456")
    bad = bad_check(good)
    assert masked(f"번호 {good}") == "번호 <KRRN>"
    assert masked(f"번호 {bad}") == f"번호 {bad}"
    assert masked(f"번호 {bad}", PIIConfig(krrn_checksum=False)) == "번호 <KRRN>"


def test_krrn_needs_a_real_birth_date_and_gender_digit():
    off = PIIConfig(krrn_checksum=False)  # so that only the date and gender checks can reject
    assert masked("x 900230-1234567", off) == "x 900230-1234567"  # 30 February
    assert masked("x 000229-3234567", off) == "x <KRRN>"  # 2000 was a leap year
    assert masked("x 010229-3234567", off) == "x 010229-3234567"  # 2001 was not
    assert masked("x 900101-9234567", off) == "x 900101-9234567"  # gender digit 9


# --- look-alikes are left alone ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "version 1.2.3",
        "upgrade to v2.10.1 now",
        "build 10.0.0.1.2",
        "release 1.2.3.4.5",
        "version 1.2.3.4",
        "on 2024-01-15",
        "on 2024.01.15",
        "on 20240115",
        "at 10:30:00 and 23:59:59.999",
        "stamp 2024-01-15T10:30:00+09:00",
        "sha 9f86d081884c7d659a2feaa0c55ad015",
        "commit 3f2a9c1e8b7d6054a1b2c3d4e5f60718293a4b5c",
        "ISBN 978-3-16-148410-0",
        "ISBN 9783161484100",
        "ISBN 9788890001093",  # passes Luhn too: only the EAN-13 check tells it from a card
        "see section 3.1.2.1",
        "ISBN 0-306-40615-2",
        "order ORD-2024-0001234",
        "order #123456789012",
        "digits 1234567890123456789012",
        "luhn fails 4111111111111112",
        "https://example.com/orders/01012345678",
        "icon@2x.png",
        "std::vector<int>",
        "mac 00:1A:2B:3C:4D:5E",
        "the 1600-1700 period",
        "price 1,234,567 won",
        "octets 256.1.1.1",
        "x+12345678",
        "epoch ms 1700000000000",
    ],
)
def test_look_alikes_are_not_masked(text):
    result = run([text])
    assert result.table.column("text")[0].as_py() == text
    assert result.table.column("pii_count")[0].as_py() == 0


# --- config ------------------------------------------------------------------------------------


def test_config_rejects_unknown_kinds_and_modes():
    with pytest.raises(ConfigError, match="kinds"):
        from_dict(PIIConfig, {"kinds": ["email", "ssn"]})
    with pytest.raises(ConfigError, match="placeholders"):
        from_dict(PIIConfig, {"placeholders": {"passport": "<P>"}})
    with pytest.raises(ConfigError, match="mode"):
        from_dict(PIIConfig, {"mode": "hash"})
    cfg = from_dict(PIIConfig, {"kinds": "email,ip", "krrn_checksum": "false"})
    assert cfg.kinds == ["email", "ip"] and cfg.krrn_checksum is False
