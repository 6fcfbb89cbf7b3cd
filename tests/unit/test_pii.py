"""PII and secret detection: planted positives for every type, realistic true negatives, redaction."""

from __future__ import annotations

import time

import pytest

from tunelab.data.pii import PII_TYPES, PiiMatch, find_pii, redact

# Token shapes are assembled at run time so that this file holds no string a secret scanner would flag.
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"
GITHUB_TOKEN = "ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1eF3hJ5"
GITHUB_PAT = "github_pat_" + "11ABCDEFG0123456789abc" + "_" + "x1" * 20
OPENAI_KEY = "sk-" + "proj-abcDEF123456ghiJKL7890mno"
SLACK_TOKEN = "xoxb-" + "123456789012-abcdefABCDEF"
GOOGLE_KEY = "AIza" + "SyA1234567890abcdefghijklmnopqrstuv"
STRIPE_KEY = "sk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc"
JWT = "eyJhbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiIxMjM0In0" + ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PRIVATE_KEY = "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM\n-----END RSA " + "PRIVATE KEY-----"

# (type, text, the one value that must be found in it)
POSITIVES: list[tuple[str, str, str]] = [
    ("EMAIL", "Write to jane.doe+news@mail.example.co.uk today.", "jane.doe+news@mail.example.co.uk"),
    ("EMAIL", "Contact: bob_smith@example.org", "bob_smith@example.org"),
    ("PHONE", "Call (415) 555-0132 after lunch.", "(415) 555-0132"),
    ("PHONE", "Office: 415-555-0132", "415-555-0132"),
    ("PHONE", "London +44 20 7946 0958 desk", "+44 20 7946 0958"),
    ("PHONE", "Moscow office +7 495 123-45-67.", "+7 495 123-45-67"),
    ("PHONE", "Beijing mobile +86 138 0013 8000", "+86 138 0013 8000"),
    ("PHONE", "US line +1 (415) 555-0132 ext 4", "+1 (415) 555-0132"),
    ("PHONE", "SMS to +14155550132 please", "+14155550132"),
    ("PHONE", "UK national 020 7946 0958.", "020 7946 0958"),
    ("PHONE", "Russian national 8 (495) 123-45-67", "8 (495) 123-45-67"),
    ("PHONE", "Chinese mobile 138-0013-8000", "138-0013-8000"),
    ("CREDIT_CARD", "Visa 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "MC 5555-5555-5555-4444", "5555-5555-5555-4444"),
    ("CREDIT_CARD", "Amex 3782 822463 10005", "3782 822463 10005"),
    ("CREDIT_CARD", "card=6011111111111117", "6011111111111117"),
    ("IBAN", "Pay to GB82 WEST 1234 5698 7654 32 by Friday", "GB82 WEST 1234 5698 7654 32"),
    ("IBAN", "IBAN: DE89370400440532013000", "DE89370400440532013000"),
    ("IBAN", "FR14 2004 1010 0505 0001 3M02 606 (Paris)", "FR14 2004 1010 0505 0001 3M02 606"),
    ("IBAN", "BE68 5390 0754 7034 SEPA transfer", "BE68 5390 0754 7034"),
    ("IPV4", "Client 203.0.113.7 logged in", "203.0.113.7"),
    ("IPV4", "ssh admin@ 192.168.1.10:22", "192.168.1.10"),
    ("IPV6", "from 2001:db8::8a2e:370:7334 today", "2001:db8::8a2e:370:7334"),
    ("IPV6", "host 2001:0db8:85a3:0000:0000:8a2e:0370:7334.", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ("IPV6", "link fe80::1%eth0", "fe80::1"),
    ("US_SSN", "SSN 123-45-6789 on file", "123-45-6789"),
    ("US_SSN", "ssn: 536-22-1234.", "536-22-1234"),
    ("UK_NINO", "NI number AB 12 34 56 C", "AB 12 34 56 C"),
    ("UK_NINO", "NINO=JG103759A", "JG103759A"),
    ("CN_RESIDENT_ID", "ID 11010519491231002X", "11010519491231002X"),
    ("CN_RESIDENT_ID", "身份证号310115198507164231。", "310115198507164231"),
    ("BR_CPF", "CPF 529.982.247-25", "529.982.247-25"),
    ("BR_CPF", "cpf: 123.456.789-09.", "123.456.789-09"),
    ("URL_CREDENTIALS", "DSN postgres://admin:s3cr3t@db.internal:5432/app", "admin:s3cr3t@"),
    ("URL_CREDENTIALS", "clone https://deploy:hunter2@git.example.com/repo.git", "deploy:hunter2@"),
    ("SECRET", f"aws_access_key_id {AWS_KEY}", AWS_KEY),
    ("SECRET", f"GH token {GITHUB_TOKEN}", GITHUB_TOKEN),
    ("SECRET", f"pat {GITHUB_PAT} done", GITHUB_PAT),
    ("SECRET", f"OPENAI {OPENAI_KEY}", OPENAI_KEY),
    ("SECRET", f"slack {SLACK_TOKEN}", SLACK_TOKEN),
    ("SECRET", f"maps {GOOGLE_KEY}", GOOGLE_KEY),
    ("SECRET", f"stripe {STRIPE_KEY}", STRIPE_KEY),
    ("SECRET", f"jwt {JWT}", JWT),
    ("SECRET", f"key:\n{PRIVATE_KEY}\nend", PRIVATE_KEY),
    ("SECRET", "password=hunter2", "hunter2"),
    ("SECRET", 'api_key: "abc123xyz"', "abc123xyz"),
    ("SECRET", "DB_SECRET = 'Tr0ub4dor&3'", "Tr0ub4dor&3"),
    ("SECRET", '{"password": "p@ss w0rd"}', "p@ss w0rd"),
    ("SECRET", "Authorization: Bearer abcdef0123456789abcdef0123", "abcdef0123456789abcdef0123"),
]

NEGATIVES: list[str] = [
    "Order 4111 1111 1111 1112 shipped",  # fails Luhn
    "Order number 1234567812345678 is ready",  # 16 digits, fails Luhn
    "Your order ORD-48213 was received",
    "Invoice dated 2024-01-15 at 10:30:00",
    "Dates 15.01.2024, 2024/01/15, 01/15/2024 and 01-15-2024 10:30",
    "Upgrade to version 1.2.3 or v1.2.3.4, not 1.2.3.4.5",
    "version 10.15.7.2 is out",
    "Invalid address 999.1.1.1",
    "Price: $1,299.99 or €1.299,99",
    "SSN 000-12-3456 and 666-12-3456 and 912-34-5678 are never issued",
    "Group 123-00-4567 and serial 123-45-0000 are invalid",
    "Bad IBAN GB82 WEST 1234 5698 7654 33",
    "Bad IBAN DE89370400440532013001",
    "Follow @jane_doe and @mary on Twitter",
    "The expression a@b is not an address, nor is user@localhost",
    "@property\ndef name(self): ...",
    "Meet at 12:30:45 tomorrow",
    "std::vector<int> v; Foo::bar();",
    "MAC 00:1A:2B:3C:4D:5E",
    "netmask 255.255.255.0 and loopback 127.0.0.1",
    "In 1999 we sold 4155550132 widgets",
    "ISBN 978-3-16-148410-0",
    "UUID 123e4567-e89b-12d3-a456-426614174000",
    "sha1 a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
    "Ratio 16:9, score 3-2, room 101",
    "sk-this-is-a-long-hyphenated-slug-name",
    'pad_token: "<pad>"\neos_token = "</s>"\nunk_token="[UNK]"',
    "max_tokens=512, num_tokens: 1024",
    "Password: required",
    "token = self.token",
    'api_key = os.getenv("OPENAI_API_KEY")',
    "client_secret=CLIENT_SECRET",
    "Password = password;",
    "password = '<SECRET>'",
    "We must talk in secret:--nurse, come back again",
    "git remote add origin git@github.com:org/repo.git",
    "postgres://user:***@db.internal/app",
    "CPF 111.111.111-11 and 123.456.789-00",
    "ID 110105194912310021",  # wrong check character
    "NINO GB 12 34 56 C and QQ123456C",  # prefixes never allocated
    "1.2.3.1 Scope of the regulation",  # a section number, not an address
    "The sum is\n+960397912423686",  # arithmetic, not E.164
    "Call extension 4567 or dial 9",
]


def _found(text: str) -> list[tuple[str, str]]:
    return [(m.type, m.value) for m in find_pii(text)]


def test_types_listed():
    assert set(PII_TYPES) >= {"EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IPV4", "IPV6", "US_SSN",
                              "URL_CREDENTIALS", "SECRET", "UK_NINO", "CN_RESIDENT_ID", "BR_CPF"}
    planted = {kind for kind, _, _ in POSITIVES}
    assert planted == set(PII_TYPES)
    assert all(sum(kind == t for kind, _, _ in POSITIVES) >= 2 for t in PII_TYPES)


@pytest.mark.parametrize(("kind", "text", "value"), POSITIVES, ids=[f"{k}-{v[:18]}" for k, _, v in POSITIVES])
def test_planted_positive_found_exactly(kind, text, value):
    assert _found(text) == [(kind, value)]
    (match,) = find_pii(text)
    assert text[match.start:match.end] == match.value


@pytest.mark.parametrize("text", NEGATIVES)
def test_true_negative_not_found(text):
    assert _found(text) == []


@pytest.mark.parametrize(("kind", "text", "value"), POSITIVES, ids=[f"{k}-{v[:18]}" for k, _, v in POSITIVES])
def test_found_inside_chinese_and_russian_text(kind, text, value):
    # Chinese is written without spaces, right up against the data; Russian with spaces.
    wrapped = f"请联系我们：{text}。谢谢！\nПожалуйста, {text} — спасибо."
    assert _found(wrapped) == [(kind, value), (kind, value)]


def test_mixed_document_matches_in_order():
    text = (
        "Hi team, Jane (jane@example.com, +44 20 7946 0958) paid with 4111-1111-1111-1111.\n"
        "Refund to DE89 3704 0044 0532 0130 00; her SSN is 123-45-6789 and she logs in from 203.0.113.7.\n"
        f"Config: password=hunter2 and {AWS_KEY}; DSN mysql://root:toor@db/prod"
    )
    assert _found(text) == [
        ("EMAIL", "jane@example.com"), ("PHONE", "+44 20 7946 0958"), ("CREDIT_CARD", "4111-1111-1111-1111"),
        ("IBAN", "DE89 3704 0044 0532 0130 00"), ("US_SSN", "123-45-6789"), ("IPV4", "203.0.113.7"),
        ("SECRET", "hunter2"), ("SECRET", AWS_KEY), ("URL_CREDENTIALS", "root:toor@"),
    ]
    matches = find_pii(text)
    assert matches == sorted(matches, key=lambda m: m.start)
    assert all(a.end <= b.start for a, b in zip(matches, matches[1:], strict=False))


def test_redact_output_and_counts():
    text = "Mail jane@example.com or call 415-555-0132; password=hunter2, card 5555 5555 5555 4444."
    redacted, counts = redact(text)
    assert redacted == "Mail <EMAIL> or call <PHONE>; password=<SECRET>, card <CREDIT_CARD>."
    assert counts == {"CREDIT_CARD": 1, "EMAIL": 1, "PHONE": 1, "SECRET": 1}


def test_redact_url_credentials_keeps_scheme_and_host():
    assert redact("postgres://admin:s3cr3t@db.internal:5432/app")[0] == "postgres://<URL_CREDENTIALS>db.internal:5432/app"


def test_redact_private_key_block_as_one():
    redacted, counts = redact(f"before\n{PRIVATE_KEY}\nafter")
    assert (redacted, counts) == ("before\n<SECRET>\nafter", {"SECRET": 1})


def test_redact_custom_placeholder_and_types():
    text = "jane@example.com, 415-555-0132"
    assert redact(text, placeholder="[REDACTED:{type}]") == ("[REDACTED:EMAIL], [REDACTED:PHONE]",
                                                             {"EMAIL": 1, "PHONE": 1})
    assert redact(text, types=["email"]) == ("<EMAIL>, 415-555-0132", {"EMAIL": 1})
    assert redact("nothing here") == ("nothing here", {})


def test_redact_is_idempotent():
    corpus = [text for _, text, _ in POSITIVES] + NEGATIVES
    for text in corpus:
        once, _ = redact(text)
        assert redact(once) == (once, {}), text


def test_more_specific_type_wins_overlaps():
    # A valid card number is never also reported as a phone, even when only phones are asked for.
    assert find_pii("card 4111-1111-1111-1111", types=["PHONE"]) == []
    # URL credentials are not an e-mail address "s3cr3t@db.example.com".
    assert _found("mysql://admin:s3cr3t@db.example.com/app") == [("URL_CREDENTIALS", "admin:s3cr3t@")]
    # An IPv4 tail inside an IPv6 address is part of the IPv6 address.
    assert _found("peer ::ffff:203.0.113.7 connected") == [("IPV6", "::ffff:203.0.113.7")]
    # A secret assignment whose value is an e-mail address is a secret.
    assert _found("password=jane@example.com") == [("SECRET", "jane@example.com")]


def test_types_filter_and_unknown_type():
    text = "jane@example.com 203.0.113.7"
    assert _found(text) == [("EMAIL", "jane@example.com"), ("IPV4", "203.0.113.7")]
    assert [m.type for m in find_pii(text, types=["ipv4"])] == ["IPV4"]
    assert [m.type for m in find_pii(text, types="EMAIL")] == ["EMAIL"]
    with pytest.raises(ValueError, match="NOT_A_TYPE"):
        find_pii(text, types=["EMAIL", "NOT_A_TYPE"])


def test_match_is_a_frozen_record():
    match = find_pii("x jane@example.com")[0]
    assert match == PiiMatch("EMAIL", 2, 18, "jane@example.com")
    with pytest.raises(AttributeError):
        match.start = 0  # type: ignore[misc]


def test_empty_and_plain_text():
    assert find_pii("") == []
    assert find_pii("The quick brown fox jumps over the lazy dog.\nЗдравствуйте! 你好，世界。 😀") == []


def test_no_pathological_slowdown():
    # Inputs built to make badly written patterns backtrack (quadratic or worse) must stay linear.
    units = ["a.", "1-", "1.", "a@", "1:", "a:", "+1 ", "0 ", "AB12 ", "password=", "x://a:", "eyJ",
             "-----BEGIN PRIVATE KEY-----", "__", "1.1.", "a::", "4111 "]
    for unit in units:
        text = unit * (20_000 // len(unit))
        start = time.perf_counter()
        find_pii(text)
        assert time.perf_counter() - start < 2.0, unit
