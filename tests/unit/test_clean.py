"""Text cleaning: each step on known inputs, the documented order, defaults, idempotence, robustness."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest

from tunelab.data import clean
from tunelab.data.clean import CLEAN_STEPS, CleanOptions, clean_text, enabled_steps

OFF = CleanOptions(nfkc=False, whitespace=False, control_chars=False, fix_mojibake=False)

TRICKY = [
    "cafÃ©", "ＡＢＣ１２３", "a\u00a0b", "zero\u200bwidth\ufeff", "<p>Hi&amp;bye</p><script>x()</script>",
    "中文文本，你好！", "Привет, мир!", "emoji 😀👍🏽 ok", "line1\r\nline2\rline3", "Ã\xa0 la carte",
    "â€œquotedâ€\x9d", "\x1b[31mred\x1b[0m", "\ud800 lone surrogate", "tab\there", "a\n\n\n\nb",
    "  lead and trail  ", "x² … ™ ½ ﬁ", "\x00\x01\x7f\x85\x9f", "naïve café", "if a<b and c>d",
    "<think>hmm</think> answer", "&lt;b&gt;", "Ｈｅｌｌｏ\u3000ｗｏｒｌｄ", "\u2028sep\u2029", "e\x00\u0301",
    "pÃ\u2008x", "def f():\n\tif x:\n\t\treturn  1\n", "", " ", "\n\n", "ok",
]


def _only(step: str, **extra) -> CleanOptions:
    return dataclasses.replace(OFF, **{step: True}, **extra)


def _random_strings(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    pool = [chr(c) for c in [*range(0x250), *range(0x2000, 0x2070), *range(0x3000, 0x3010),
                             *range(0xFF00, 0xFF60), 0xFEFF, 0x1F600, 0x200D, 0xD800, 0x0301, 0x0308]]
    pool += ["Ã", "â€", "\xa0", "&amp;", "<p>", "</p>", "<script>", "<br/>", "<!--", "<![", "&#", "1,234",
             " 3.5 ", "\n", "    "]
    return ["".join(rnd.choice(pool) for _ in range(rnd.randint(0, 60))) for _ in range(n)]


# ---- the order -------------------------------------------------------------------------------------------


def test_steps_are_named_after_options_in_documented_order():
    assert CLEAN_STEPS == ("fix_mojibake", "nfkc", "control_chars", "strip_html", "whitespace", "lowercase",
                           "numbers_to_words", "remove_special_chars", "remove_stopwords", "lemmatize", "stem")
    fields = {f.name for f in dataclasses.fields(CleanOptions)}
    assert set(CLEAN_STEPS) <= fields
    # The module docstring's numbered list names the steps in the same order.
    documented = re.findall(r"^\s*\d+\. ``(\w+)``", clean.__doc__ or "", flags=re.M)
    assert tuple(documented) == CLEAN_STEPS


@pytest.mark.parametrize("last", ["lemmatize", "stem"])
def test_applied_order_is_clean_steps(monkeypatch, last):
    applied: list[str] = []

    def recorder(name):
        def step(text, opts):
            applied.append(name)
            return text
        return step

    monkeypatch.setattr(clean, "_STEP_FUNCTIONS", {name: recorder(name) for name in CLEAN_STEPS})
    opts = CleanOptions(**{name: True for name in CLEAN_STEPS if name not in ("lemmatize", "stem")}, **{last: True})
    clean_text("some text", opts)
    assert applied == enabled_steps(opts) == [name for name in CLEAN_STEPS if name != {"stem": "lemmatize",
                                                                                          "lemmatize": "stem"}[last]]


def test_enabled_steps_for_defaults():
    assert enabled_steps(CleanOptions()) == ["fix_mojibake", "nfkc", "control_chars", "whitespace"]
    assert enabled_steps(OFF) == []
    assert clean_text(" \x00 raw\u00a0 ", OFF) == " \x00 raw\u00a0 "


# ---- each step on known inputs -------------------------------------------------------------------------

STEP_CASES = [
    ("fix_mojibake", "cafÃ©", "café"),
    ("fix_mojibake", "â€œquotedâ€\x9d", "“quoted”"),
    ("fix_mojibake", "“curly” &amp; ＡＢＣ naïve", "“curly” &amp; ＡＢＣ naïve"),  # encoding fixes only
    ("nfkc", "ＡＢＣ１２３", "ABC123"),
    ("nfkc", "a\u00a0b ﬁ ™ ℃", "a b fi TM °C"),
    ("nfkc", "E = mc², H₂O, ½ cup, 1º, 中文，标点！（全角）……", "E = mc², H₂O, ½ cup, 1º, 中文，标点！（全角）……"),
    ("control_chars", "a\x00b\x07c\x7f\x9f", "abc"),
    ("control_chars", "line1\r\nline2\rline3\x0bline4\u2028line5", "line1\nline2\nline3\nline4\nline5"),
    ("control_chars", "zero\u200bwidth\u200c\u200d\ufeff", "zerowidth"),
    ("control_chars", "\x1b[31mred\x1b[0m\ttab\nnewline", "red\ttab\nnewline"),
    ("strip_html", "<p>Hi&amp;bye</p><script>x()</script>", "Hi&bye\n"),
    ("strip_html", "<ul><li>one</li><li>two</li></ul>a<br>b<br><br>c<!-- note -->", "one\ntwo\na\nb\n\nc"),
    ("strip_html", "<style>p{color:red}</style>&lt;b&gt; is text", "<b> is text"),
    ("strip_html", "<think>plan</think> <b>bold</b> <tool_call>{}</tool_call>", "<think>plan</think> bold <tool_call>{}</tool_call>"),
    ("whitespace", "  a \t b  \n  \n\n\n  c  ", "a b\n\nc"),
    ("whitespace", "Code:\n    def f():\n        return  1   \n", "Code:\n    def f():\n        return 1"),
    ("whitespace", "    indented\n      block", "indented\n  block"),
    ("lowercase", "Hello ÄÖÜ World", "hello äöü world"),
    ("numbers_to_words", "I have 3 cats, 1,234 fish and 2.5 dogs; mp3 COVID19 3rd",
     "I have three cats, one thousand, two hundred and thirty-four fish and two point five dogs; mp3 COVID19 3rd"),
    ("numbers_to_words", "id 12345678901234567890 and 42", "id 12345678901234567890 and forty-two"),
    ("remove_special_chars", "Hello, World! #tag @user $100 50% (x) e-mail don’t — ok 😀 Привет 你好 naïve",
     "Hello, World! tag user 100 50 x e-mail don't ok Привет 你好 naïve"),
    ("remove_stopwords", "The cat sat on the mat.\nIt was not happy!", "cat sat mat.\nhappy!"),
    ("lemmatize", "The cats were running quickly", "the cat be run quickly"),
    ("stem", "The cats were running quickly", "the cat were run quick"),
]


@pytest.mark.parametrize(("step", "text", "expected"), STEP_CASES, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(STEP_CASES)])
def test_step_on_known_input(step, text, expected):
    assert clean_text(text, _only(step)) == expected


@pytest.mark.parametrize(("opts", "text", "expected"), [
    (CleanOptions(numbers_to_words=True, language="de"), "Ich habe 3 Katzen und 21 Hunde",
     "Ich habe drei Katzen und einundzwanzig Hunde"),
    (CleanOptions(numbers_to_words=True, language="ru"), "У меня 3 кошки", "У меня три кошки"),
    (CleanOptions(lemmatize=True, language="de"), "Die Häuser waren schön", "der Haus sein schön"),
    (CleanOptions(stem=True, language="de"), "Die Katzen liefen schnell", "die katz lief schnell"),
    (CleanOptions(stem=True, language="ru"), "Кошки бегали быстро", "кошк бега быстр"),
    (CleanOptions(stem=True, language="en-US"), "running cats", "run cat"),
    (CleanOptions(remove_stopwords=True, language="de"), "Die Katze und der Hund", "Die Katze und der Hund"),
    (CleanOptions(strip_html=True), "<p>Hi&amp;bye</p><script>x()</script>", "Hi&bye"),
])
def test_language_aware_and_combined(opts, text, expected):
    assert clean_text(text, opts) == expected


def test_classic_nlp_pipeline_together():
    opts = CleanOptions(strip_html=True, lowercase=True, numbers_to_words=True, remove_special_chars=True,
                        remove_stopwords=True, stem=True)
    text = "<p>The 2 QUICK foxes &amp; their dens!</p>"
    assert clean_text(text, opts) == "quick fox den!"


# ---- options are checked up front --------------------------------------------------------------------


def test_stem_and_lemmatize_together_is_an_error():
    with pytest.raises(ValueError, match=r"'stem' and 'lemmatize'"):
        CleanOptions(stem=True, lemmatize=True)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"stem": True, "language": "zh"}, "stem"),
    ({"lemmatize": True, "language": "zh"}, "lemmatize"),
    ({"numbers_to_words": True, "language": "xx"}, "numbers_to_words"),
])
def test_unsupported_language_is_an_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CleanOptions(**kwargs)


def test_stopwords_in_other_languages_is_not_an_error():
    assert CleanOptions(remove_stopwords=True, language="zh").language == "zh"


# ---- defaults, idempotence, robustness ---------------------------------------------------------------

ORDINARY = [
    "Hello, world! How are you today?",
    "User: what's 2+2?\nAssistant: It's 4.",
    "Paragraph one.\n\nParagraph two, with “curly quotes” and an em dash — like this.",
    "Here is code:\ndef f(x):\n    return x * 2",
    "中文文本，没有问题。等等……",
    "Русский текст: всё хорошо.",
    "Emoji are fine 😀🎉 and so is café.",
    "<b>tags stay</b> when strip_html is off; so does &amp;.",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_defaults_leave_ordinary_text_unchanged(text):
    assert clean_text(text) == text
    assert clean_text(text, CleanOptions()) == text


@pytest.mark.parametrize("text", TRICKY)
def test_defaults_are_idempotent_on_tricky_strings(text):
    once = clean_text(text)
    assert clean_text(once) == once


def test_defaults_are_idempotent_on_random_strings():
    for text in _random_strings(1500, seed=1):
        once = clean_text(text)
        assert clean_text(once) == once, repr(text)


def test_defaults_on_tricky_strings():
    expected = {
        "cafÃ©": "café", "ＡＢＣ１２３": "ABC123", "a\u00a0b": "a b", "zero\u200bwidth\ufeff": "zerowidth",
        "line1\r\nline2\rline3": "line1\nline2\nline3", "a\n\n\n\nb": "a\n\nb", "  lead and trail  ": "lead and trail",
        "Ｈｅｌｌｏ\u3000ｗｏｒｌｄ": "Hello world", "e\x00\u0301": "é", "Ã\xa0 la carte": "à la carte",
    }
    assert {text: clean_text(text) for text in expected} == expected


ALL_KINDS = [
    CleanOptions(),
    CleanOptions(strip_html=True),
    CleanOptions(strip_html=True, lowercase=True, numbers_to_words=True, remove_special_chars=True,
                 remove_stopwords=True, stem=True),
    CleanOptions(lemmatize=True, numbers_to_words=True, language="de"),
    CleanOptions(stem=True, language="ru", remove_stopwords=True),
    dataclasses.replace(OFF, strip_html=True, remove_special_chars=True, lemmatize=True),
]


def test_never_raises_on_arbitrary_unicode():
    for text in TRICKY + _random_strings(300, seed=2):
        for opts in ALL_KINDS:
            assert isinstance(clean_text(text, opts), str)
