"""Find and redact personal data and secrets in text.

Each type is found by a regular expression that proposes candidates and a check that accepts or rejects
them: Luhn and issuer prefixes for card numbers, mod-97 and the per-country length for IBANs, the
``ipaddress`` module for IP addresses, ISO 7064 for Chinese resident IDs, check digits for Brazilian CPFs,
the allocation rules for US SSNs and UK National Insurance numbers. Precision matters as much as recall:
a data report that flags every order number as a card teaches users to ignore it.

Typical use::

    find_pii("mail jane.doe@example.com or call +44 20 7946 0958")
    # [PiiMatch(type='EMAIL', start=5, end=25, value='jane.doe@example.com'),
    #  PiiMatch(type='PHONE', start=34, end=50, value='+44 20 7946 0958')]
    redact("password=hunter2 sent to jane@example.com")
    # ('password=<SECRET> sent to <EMAIL>', {'EMAIL': 1, 'SECRET': 1})

Overlaps are resolved by specificity (see `SPECIFICITY`): a valid card number is not also a phone number,
and credentials in a URL are not an e-mail address. Types are resolved over all detectors first and
filtered afterwards, so asking only for ``PHONE`` never reports a card number as a phone.

Patterns are ASCII-only on purpose (``re.ASCII``): Chinese or Russian text written right up against a
number (``电话138-0013-8000``) must not hide it, and full-width or other-script digits are not matched
(normalise with NFKC first; `tunelab.data.clean` does).
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date

__all__ = ["PII_TYPES", "SPECIFICITY", "PiiMatch", "find_pii", "redact"]

PII_TYPES: tuple[str, ...] = (
    "EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IPV4", "IPV6", "US_SSN", "URL_CREDENTIALS", "SECRET",
    "UK_NINO", "CN_RESIDENT_ID", "BR_CPF",
)

# Most specific first: when two candidates overlap, the earlier type wins (then the longer match).
SPECIFICITY: tuple[str, ...] = (
    "SECRET", "URL_CREDENTIALS", "EMAIL", "IBAN", "CREDIT_CARD", "CN_RESIDENT_ID", "BR_CPF", "UK_NINO",
    "US_SSN", "IPV6", "IPV4", "PHONE",
)
_RANK = {name: i for i, name in enumerate(SPECIFICITY)}

# No letter, digit or underscore may touch a match, and no separator-plus-digit may continue it.
_END = r"(?![\w]|[.-]\d)"


@dataclass(frozen=True)
class PiiMatch:
    """One piece of personal data or one secret found in a text.

    Attributes:
        type: one of `PII_TYPES`.
        start: offset of the first character (``text[start:end] == value``).
        end: offset one past the last character.
        value: the matched text.
    """

    type: str
    start: int
    end: int
    value: str


Span = tuple[int, int]
Check = Callable[[re.Match, str], "Span | None"]


@dataclass(frozen=True)
class _Rule:
    """A pattern for one type, and the check a candidate must pass (it returns the span, maybe narrowed)."""

    type: str
    pattern: re.Pattern
    check: Check | None = None

    def scan(self, text: str) -> Iterator[PiiMatch]:
        for m in self.pattern.finditer(text):
            span = self.check(m, text) if self.check else m.span()
            if span is not None and span[0] < span[1]:
                yield PiiMatch(self.type, span[0], span[1], text[span[0]:span[1]])


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s, flags=re.ASCII)


# ---- e-mail ------------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])"
    r"[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"  # local part, no dot at either end
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,10}[A-Za-z]{2,24}"  # a dot is required: no a@b
    r"(?![A-Za-z0-9-]|\.[A-Za-z0-9])",
    re.ASCII,
)


def _check_email(m: re.Match, text: str) -> Span | None:
    # "git@github.com:org/repo" is an SSH remote (user@host:path), not a mailbox.
    if ".." in m.group() or re.match(r":[\w~/.-]", text[m.end():m.end() + 2]):
        return None
    return m.span()


# ---- phone numbers -----------------------------------------------------------------------------------

# +CC then groups with separators (or E.164 with none): +44 20 7946 0958, +1 (415) 555-0132, +14155550132.
_PHONE_INTL = re.compile(
    r"(?<![\w+])\+\d{1,3}"
    r"(?:\d{6,12}"
    r"|(?:[ .-]?\(\d{1,4}\)[ .-]?\d{1,8}|[ .-]\d{1,8})(?:[ .-]\d{1,8}){0,5})" + _END,
    re.ASCII,
)
# North American numbers: area code and exchange start 2-9, one consistent separator (no spaces: a run of
# three numbers separated by spaces is too often a table or a list of quantities).
_PHONE_US = re.compile(
    r"(?<![\w+.-])(?:1[ .-])?"
    r"(?:\([2-9]\d{2}\) ?[2-9]\d{2}[ .-]\d{4}|[2-9]\d{2}(?P<sep>[.-])[2-9]\d{2}(?P=sep)\d{4})" + _END,
    re.ASCII,
)
# National numbers with a trunk 0: 020 7946 0958, (020) 7946 0958, 030 12345678, 01 23 45 67 89.
_PHONE_TRUNK0 = re.compile(
    r"(?<![\w+.-])(?:\(0\d{1,4}\) ?|0\d{1,4}[ .-])\d{2,8}(?:[ .-]\d{2,8}){0,4}" + _END, re.ASCII
)
# Russian trunk 8: 8 (495) 123-45-67, 8 800 555 35 35.  Chinese mobiles: 138 0013 8000, 138-0013-8000.
_PHONE_RU = re.compile(
    r"(?<![\w+.-])8(?:[ -]?\(\d{3,5}\)[ -]?\d{1,3}-\d{2}-\d{2}|[ -]\d{3}[ -]\d{3}[ -]\d{2}[ -]\d{2})" + _END,
    re.ASCII,
)
_PHONE_CN = re.compile(r"(?<![\w+.-])1[3-9]\d(?P<sep>[ -])\d{4}(?P=sep)\d{4}" + _END, re.ASCII)


def _check_phone_intl(m: re.Match, text: str) -> Span | None:
    # E.164 allows at most 15 digits; fewer than 9 is a short code or not a phone at all. Without any
    # separator, "+" and a long digit run is as often arithmetic as a phone: ask for a common length.
    n = len(_digits(m.group()))
    ok = 9 <= n <= 15 if re.search(r"[ .()-]", m.group()) else 10 <= n <= 14
    return m.span() if ok else None


def _check_phone_trunk0(m: re.Match, text: str) -> Span | None:
    s = m.group()
    if not 10 <= len(_digits(s)) <= 11:
        return None
    if len(set(re.findall(r"(?<=\d)[ .-](?=\d)", s))) > 1:  # 01-15-2024 10:30 mixes separators
        return None
    lengths = [len(g) for g in re.findall(r"\d+", s)][:3]
    looks_like_date = len(lengths) == 3 and lengths[0] <= 2 and lengths[1] <= 2 and lengths[2] == 4
    return None if looks_like_date else m.span()


def _check_digit_count(n: int) -> Check:
    return lambda m, text: m.span() if len(_digits(m.group())) == n else None


# ---- payment: cards and IBANs ------------------------------------------------------------------------

_CARD = re.compile(
    r"(?<![\w-])(?:\d{13,19}"
    r"|\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{1,3})?"  # 4-4-4-4(-3)
    r"|\d{4}(?P<t>[ -])\d{6}(?P=t)\d{4,5})"  # Amex 4-6-5, Diners 4-6-4
    r"(?![\w]|[ -]?\d)",
    re.ASCII,
)
# (issuer, inclusive prefix ranges, allowed lengths): a Luhn-valid number outside these is not a card.
_CARD_ISSUERS: tuple[tuple[str, tuple[tuple[int, int], ...], tuple[int, ...]], ...] = (
    ("visa", ((4, 4),), (16, 19)),  # 13-digit Visas are no longer issued; 13-digit runs are common
    ("mastercard", ((51, 55), (2221, 2720)), (16,)),
    ("amex", ((34, 34), (37, 37)), (15,)),
    ("discover", ((6011, 6011), (644, 649), (65, 65)), (16, 17, 18, 19)),
    ("diners", ((300, 305), (36, 36), (38, 39)), (14, 15, 16, 17, 18, 19)),
    ("jcb", ((3528, 3589),), (16, 17, 18, 19)),
    ("unionpay", ((62, 62),), (16, 17, 18, 19)),
    ("mir", ((2200, 2204),), (16, 17, 18, 19)),
    ("maestro", ((5018, 5018), (5020, 5020), (5038, 5038), (5893, 5893), (6304, 6304), (6759, 6759),
                 (6761, 6763)), (16, 17, 18, 19)),
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _card_issuer(digits: str) -> str | None:
    for issuer, ranges, lengths in _CARD_ISSUERS:
        if len(digits) in lengths and any(lo <= int(digits[: len(str(lo))]) <= hi for lo, hi in ranges):
            return issuer
    return None


def _check_card(m: re.Match, text: str) -> Span | None:
    digits = _digits(m.group())
    return m.span() if _luhn_ok(digits) and _card_issuer(digits) else None


_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])", re.ASCII
)
# Total IBAN length per country (ISO 13616 registry), for the countries users most often meet.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31,
    "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24,
    "XK": 20,
}


def _iban_mod97_ok(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _check_iban(m: re.Match, text: str) -> Span | None:
    """Valid when the first `length` alphanumerics pass mod-97 and end at a group boundary.

    The pattern may run on into a following 4-character word (``BE68 5390 0754 7034 SEPA``), so the span
    is cut at the country's length rather than rejected.
    """
    length = _IBAN_LENGTHS.get(m.group()[:2])
    if length is None:
        return None
    seen, end = 0, m.start()
    while seen < length and end < m.end():
        seen += text[end] != " "
        end += 1
    boundary = end == m.end() or text[end] == " "
    compact = text[m.start():end].replace(" ", "")
    return (m.start(), end) if seen == length and boundary and _iban_mod97_ok(compact) else None


# ---- network -----------------------------------------------------------------------------------------

_IPV4 = re.compile(r"(?<![\w.-])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)", re.ASCII)  # not pkg-3.6.0.0
_VERSION_BEFORE = re.compile(r"(?i)(?:\b(?:version|ver|release|rev|build)\.?|\bv)\s*$")
_IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}"
    r"(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\w)",
    re.ASCII,
)


def _is_outline_number(m: re.Match, text: str) -> bool:
    """A section number such as ``1.2.3.1 Scope`` at the start of a line: small parts, first below 10."""
    line_start = text.rfind("\n", 0, m.start()) + 1
    parts = [int(p) for p in m.group().split(".")]
    return not text[line_start:m.start()].strip() and parts[0] < 10 and max(parts) <= 30


def _check_ipv4(m: re.Match, text: str) -> Span | None:
    if _VERSION_BEFORE.search(text[max(0, m.start() - 12):m.start()]):  # "version 1.2.3.4" is not an IP
        return None
    if _is_outline_number(m, text):
        return None
    try:
        address = ipaddress.IPv4Address(m.group())  # octets 0-255, no leading zeros
    except ValueError:
        return None
    # Loopback, 0.0.0.0 and netmasks (255.255.255.0: ones then zeros) identify no one.
    inverted = ~int(address) & 0xFFFFFFFF
    if address.is_loopback or address.is_unspecified or inverted & (inverted + 1) == 0:
        return None
    return m.span()


def _check_ipv6(m: re.Match, text: str) -> Span | None:
    s = m.group()
    # A digit and two non-empty groups keep out "::", "::1" and code such as "add::face".
    if not re.search(r"\d", s) or len([g for g in re.split(r"[:.]", s) if g]) < 2:
        return None
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return None
    return m.span()


_URL_CREDENTIALS = re.compile(
    r"(?<![\w+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}://(?P<cred>[^\s:/?#@]{1,128}:(?P<password>[^\s/?#]{1,256})@)",
    re.ASCII,
)


def _check_url_credentials(m: re.Match, text: str) -> Span | None:
    # "user:...@", "user:***@", "user:<password>@", "user:${PASS}@" show where a password goes, not one.
    password = m.group("password")
    placeholder = re.fullmatch(r"[.*x•]+", password) or password[0] in "<{$[%"
    return None if placeholder else m.span("cred")


# ---- national identifiers ----------------------------------------------------------------------------

# SSA rules: area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
_US_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w]|-\d)", re.ASCII)
# HMRC: first letter not D F I Q U V, second not D F I O Q U V, prefixes BG GB KN NK NT TN ZZ unused.
_UK_NINO = re.compile(
    r"(?<![A-Za-z0-9])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r"(?P<s> ?)\d{2}(?P=s)\d{2}(?P=s)\d{2}(?P=s)[A-D](?![A-Za-z0-9])",
    re.ASCII,
)
_CN_ID = re.compile(r"(?<![A-Za-z0-9])[1-8]\d{5}(?:19|20)\d{6}\d{3}[0-9Xx](?![A-Za-z0-9])", re.ASCII)
_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_BR_CPF = re.compile(r"(?<![\w.-])\d{3}\.\d{3}\.\d{3}-\d{2}" + _END, re.ASCII)


def _check_cn_id(m: re.Match, text: str) -> Span | None:
    """GB 11643: six-digit region, a real birth date, and an ISO 7064 MOD 11-2 check character."""
    s = m.group().upper()
    try:
        date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return None
    check = "10X98765432"[sum(int(c) * w for c, w in zip(s[:17], _CN_ID_WEIGHTS, strict=True)) % 11]
    return m.span() if s[17] == check else None


def _cpf_digit(digits: str) -> str:
    weight = len(digits) + 1
    return str(sum(int(d) * (weight - i) for i, d in enumerate(digits)) * 10 % 11 % 10)


def _check_cpf(m: re.Match, text: str) -> Span | None:
    d = _digits(m.group())
    if len(set(d)) == 1:  # 111.111.111-11 passes the checksum but is never issued
        return None
    ok = _cpf_digit(d[:9]) == d[9] and _cpf_digit(d[:10]) == d[10]
    return m.span() if ok else None


# ---- secrets -----------------------------------------------------------------------------------------

_TOKENS = re.compile(
    r"(?<![\w-])(?:"
    r"(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"  # GitHub
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|xox[baprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|[sr]k_(?:live|test)_[0-9A-Za-z]{16,}"  # Stripe secret and restricted keys
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}"  # JWT: base64url('{"...') . payload . sig
    r")(?![\w-])",
    re.ASCII,
)
_SK_KEY = re.compile(r"(?<![\w-])sk-[A-Za-z0-9_-]{20,}(?![\w-])", re.ASCII)  # OpenAI / Anthropic style
_PRIVATE_KEY = re.compile(
    # The body may not run into the next BEGIN: many BEGINs without an END would otherwise scan quadratically.
    r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY-----(?:[^-]|-(?!----BEGIN))*?-----END[ A-Z0-9]{0,40}PRIVATE KEY-----",
    re.ASCII,
)
_BEARER = re.compile(r"(?<![\w-])[Bb]earer\s+(?P<value>[A-Za-z0-9._~+/-]{20,}=*)", re.ASCII)
_ASSIGNMENT = re.compile(
    # Anchored on the keyword (the rest of the key name is read backwards by the check): trying a key prefix
    # at every word start was the slowest pattern here by far.
    r"(?P<kw>password|passwd|passphrase|secret|api[_-]?key|apikey|access[_-]?key|private[_-]?key|token)"
    r"[\"']?(?P<pre>[ \t]*)(?P<sep>(?<![=!<>])[:=](?!=))(?P<post>[ \t]*)"
    # Unquoted values are printable ASCII: "password=hunter2，谢谢" ends at the full-width comma.
    r"(?P<q>[\"'])?(?P<value>(?(q)[^\"'\r\n]{1,256}|(?:(?![\"',;&])[!-~]){1,256}))(?(q)(?P=q))",
    re.ASCII | re.IGNORECASE,
)
# Tokenizer settings are not credentials: pad_token: "<pad>", eos_token = "</s>".
_SPECIAL_TOKEN_KEY = re.compile(r"(?i)(?:^|[_.-])(?:pad|eos|bos|unk|sep|cls|mask|start|end|special)[_-]?token$")
_NOT_A_VALUE = {"none", "null", "nil", "true", "false", "undefined", "redacted", "required", "optional"}
_PLACEHOLDER_VALUE = re.compile(r"(?i)^(?:your|enter|insert)(?:[_ -]|$)|^your(?=[a-z]*(?:key|token|secret|pass))"
                                r"|placeholder|_here$|^x{4,}$")
_CODE_WORDS = {"async", "await", "new", "this", "self", "cls", "function", "lambda", "return", "static",
               "const", "final", "private", "public", "string", "bytes"}


def _check_sk_key(m: re.Match, text: str) -> Span | None:
    body = m.group()[3:]
    # Real keys mix letters and digits; a long hyphenated slug ("sk-this-is-a-long-name") does not.
    return m.span() if re.search(r"\d", body) and re.search(r"[A-Za-z]", body) else None


def _check_bearer(m: re.Match, text: str) -> Span | None:
    return m.span("value") if re.search(r"\d", m.group("value")) else None


def _is_placeholder(value: str) -> bool:
    """Template values (``<SECRET>``, ``${DB_PASS}``, ``your_api_key_here``, ``None``), not secrets.

    Values starting with ``<`` include our own placeholder, which keeps `redact` idempotent.
    """
    return len(value) < 4 or value[0] in "<[{($%*" or value.lower() in _NOT_A_VALUE or bool(
        _PLACEHOLDER_VALUE.search(value))


def _is_code_reference(m: re.Match, value: str) -> bool:
    """An unquoted value that is code, not a literal: ``getenv("X")``, ``settings.KEY``, ``Password = password``."""
    if re.search(r"[()\[\]{}]", value) or value.lower() in _CODE_WORDS:
        return True
    if re.fullmatch(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+", value):
        return True  # a CONSTANT_NAME or an attribute path
    # A spaced assignment from a variable named after the key is code; "password=mypassword" is config.
    spaced = m.group("pre") or m.group("post")
    return bool(spaced and re.fullmatch(r"[A-Za-z_]\w*", value) and m.group("kw").lower() in value.lower())


def _looks_like_prose(value: str) -> bool:
    """After a colon, a plain lowercase word is prose ("Password: required"), not a YAML secret."""
    has_signal = re.search(r"[\d\W_]", value) or (value.lower() != value and value.upper() != value)
    return not has_signal and len(value) < 16


def _key_start(m: re.Match, text: str) -> int:
    """Where the key whose name ends with the matched keyword starts: ``DB_PASSWORD``, ``cfg.pad_token``."""
    start = m.start()
    while start > 0 and m.start() - start < 40 and (text[start - 1].isascii() and text[start - 1].isalnum()
                                                     or text[start - 1] in "_.-"):
        start -= 1
    return start


def _is_config_key(key: str, text: str, key_start: int) -> bool:
    """A key as written in config (``db_password``, ``apiKey``, a line's first word, a JSON key), not prose.

    After a colon only such keys count: "we must talk in secret:--nurse" is Shakespeare.
    """
    if re.search(r"[_.-]|[a-z][A-Z]", key):
        return True
    before = text[text.rfind("\n", 0, key_start) + 1:key_start].strip()
    return not before or before[-1] in "{,\"'-"


def _check_assignment(m: re.Match, text: str) -> Span | None:
    key_start = _key_start(m, text)
    key = text[key_start:m.end("kw")]
    if _SPECIAL_TOKEN_KEY.search(key):
        return None
    quoted = m.group("q") is not None
    # Unquoted, a trailing full stop or colon ends the sentence, not the password.
    value = m.group("value") if quoted else m.group("value").rstrip(".:)")
    if _is_placeholder(value) or value != value.strip():  # '"PASSWORD=" + pw + ";"' quotes code, not a secret
        return None
    if not quoted and _is_code_reference(m, value):
        return None
    if not quoted and m.group("sep") == ":" and (_looks_like_prose(value) or not _is_config_key(key, text, key_start)):
        return None
    start = m.start("value")
    return start, start + len(value)


# ---- detection ---------------------------------------------------------------------------------------

_RULES: tuple[_Rule, ...] = (
    _Rule("SECRET", _PRIVATE_KEY),
    _Rule("SECRET", _TOKENS),
    _Rule("SECRET", _SK_KEY, _check_sk_key),
    _Rule("SECRET", _BEARER, _check_bearer),
    _Rule("SECRET", _ASSIGNMENT, _check_assignment),
    _Rule("URL_CREDENTIALS", _URL_CREDENTIALS, _check_url_credentials),
    _Rule("EMAIL", _EMAIL, _check_email),
    _Rule("IBAN", _IBAN, _check_iban),
    _Rule("CREDIT_CARD", _CARD, _check_card),
    _Rule("CN_RESIDENT_ID", _CN_ID, _check_cn_id),
    _Rule("BR_CPF", _BR_CPF, _check_cpf),
    _Rule("UK_NINO", _UK_NINO),
    _Rule("US_SSN", _US_SSN),
    _Rule("IPV6", _IPV6, _check_ipv6),
    _Rule("IPV4", _IPV4, _check_ipv4),
    _Rule("PHONE", _PHONE_INTL, _check_phone_intl),
    _Rule("PHONE", _PHONE_US),
    _Rule("PHONE", _PHONE_TRUNK0, _check_phone_trunk0),
    _Rule("PHONE", _PHONE_RU, _check_digit_count(11)),
    _Rule("PHONE", _PHONE_CN),
)


def _wanted_types(types: Iterable[str] | None) -> set[str]:
    if types is None:
        return set(PII_TYPES)
    wanted = {t.upper() for t in ([types] if isinstance(types, str) else types)}
    unknown = sorted(wanted - set(PII_TYPES))
    if unknown:
        raise ValueError(f"unknown PII type(s) {', '.join(unknown)}; known types: {', '.join(PII_TYPES)}")
    return wanted


def _resolve_overlaps(candidates: Iterable[PiiMatch]) -> list[PiiMatch]:
    """Keep a non-overlapping subset: the most specific type first, then the longest, then the earliest."""
    ranked = sorted(candidates, key=lambda c: (_RANK[c.type], c.start - c.end, c.start))
    starts: list[int] = []  # kept spans, sorted by start (they do not overlap, so ends are sorted too)
    kept: list[PiiMatch] = []
    for cand in ranked:
        i = bisect_left(starts, cand.start)
        clear_left = i == 0 or kept[i - 1].end <= cand.start
        clear_right = i == len(kept) or cand.end <= kept[i].start
        if clear_left and clear_right:
            starts.insert(i, cand.start)
            kept.insert(i, cand)
    return kept


def find_pii(text: str, types: Iterable[str] | None = None) -> list[PiiMatch]:
    """Find personal data and secrets in a text.

    Args:
        text: any text.
        types: the types to report (names from `PII_TYPES`, any case); None for all. Overlaps are resolved
            over all types before filtering, so a card number is never reported as a phone.

    Returns:
        Non-overlapping matches sorted by position.

    Raises:
        ValueError: a name in ``types`` is not in `PII_TYPES`.
    """
    wanted = _wanted_types(types)
    candidates = [match for rule in _RULES for match in rule.scan(text)]
    return [m for m in _resolve_overlaps(candidates) if m.type in wanted]


def redact(
    text: str, types: Iterable[str] | None = None, placeholder: str = "<{type}>"
) -> tuple[str, dict[str, int]]:
    """Replace personal data and secrets with typed placeholders.

    Redacting already-redacted text changes nothing with the default placeholder: ``<EMAIL>`` matches no
    pattern, and an assignment whose value starts with ``<`` is taken for a placeholder.

    Args:
        text: any text.
        types: the types to redact (see `find_pii`); None for all.
        placeholder: the replacement; ``{type}`` in it becomes the type name.

    Returns:
        The redacted text and the number of replacements per type (types with none are left out).
    """
    pieces: list[str] = []
    counts: dict[str, int] = {}
    pos = 0
    for m in find_pii(text, types):
        pieces += [text[pos:m.start], placeholder.replace("{type}", m.type)]
        counts[m.type] = counts.get(m.type, 0) + 1
        pos = m.end
    pieces.append(text[pos:])
    return "".join(pieces), dict(sorted(counts.items()))
