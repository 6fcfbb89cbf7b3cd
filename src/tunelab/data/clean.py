"""Configurable text normalisers, applied in a fixed, documented order.

The steps, in the order `clean_text` applies them (`CLEAN_STEPS`; each is named after its `CleanOptions`
field and runs only when that field is true):

1. ``fix_mojibake`` — repair text decoded with the wrong codec (``cafÃ©`` → ``café``) with ftfy, limited to
   its encoding fixes: it does not touch quotes, character width, line breaks or HTML entities, which are
   other steps' business (or nobody's).
2. ``nfkc`` — Unicode NFKC: full-width ``ＡＢＣ１２３`` → ``ABC123``, NBSP → space, ``ﬁ`` → ``fi``,
   ``™`` → ``TM``. Except where folding would change the text's meaning or its language's writing
   (`_NFKC_KEPT`): superscripts and subscripts (``mc²``), fractions (``½``), ordinals (``1º``), and the
   punctuation of Chinese and Japanese (full-width ``，！？：（）``, the ellipsis ``……``) stay as they are.
3. ``control_chars`` — line endings (CRLF, CR, VT, FF, NEL, U+2028/9) become ``\\n``; ANSI terminal
   escapes, other C0/C1 controls and DEL are dropped, ``\\n`` and ``\\t`` kept; zero-width U+200B–U+200D
   and U+FEFF are dropped (note: that includes the joiner inside emoji sequences such as 👨‍👩‍👧).
4. ``strip_html`` — tags dropped with the stdlib HTML parser, ``<script>``/``<style>`` content dropped,
   entities unescaped, block elements and ``<br>`` become line breaks. Tags that are not HTML elements
   (``<think>``, ``<tool_call>``) are kept as text: chat data uses them. Off by default, because text
   that is not HTML (``if a<b and c>d``) can look like it.
5. ``whitespace`` — within a line, runs of horizontal whitespace (any Unicode space, tabs) become one
   space and trailing whitespace goes; indentation is kept relative to the least indented line (the
   common margin goes, as with ``textwrap.dedent``), because code and nested lists in chat data need it.
   Whitespace-only lines become empty, three or more newlines become two, blank lines at the ends go.
   Single newlines are kept: they carry structure in chat data.
6. ``lowercase`` — ``str.lower``.
7. ``numbers_to_words`` — integers and decimals (``1,234``, ``3.5``) spelled out with num2words in
   ``language``; digits inside words (``mp3``) are left alone.
8. ``remove_special_chars`` — keeps letters and combining marks of any script, digits, whitespace and
   ``. , ! ? ' -``; typographic apostrophes become ``'``; anything else becomes a space.
9. ``remove_stopwords`` — scikit-learn's English stop-word list. For any other ``language`` the text is
   returned unchanged: there is no stop-word list we trust for it offline.
10. ``lemmatize`` — simplemma, per word, in ``language`` (lowercases most words).
11. ``stem`` — nltk's Snowball stemmer for ``language`` (its English stemmer is Porter2, the successor of
    Porter's); output is lowercase. ``lemmatize`` and ``stem`` together are an error.

Steps that delete characters or words (8, 9) collapse the spaces they leave behind.

Guarantees: `clean_text` does not raise on any ``str`` (lone surrogates included), and with the default
options it is idempotent: ``clean_text(clean_text(x), o) == clean_text(x, o)``. Options are checked when
`CleanOptions` is built, so a bad language fails before any data is read.
"""

from __future__ import annotations

import re
import textwrap
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache, lru_cache
from html.parser import HTMLParser

# ftfy, num2words, scikit-learn, simplemma and nltk are imported where they are used: scikit-learn and
# nltk alone take seconds to import, and most runs use none of the classic-NLP steps.

__all__ = ["CLEAN_STEPS", "CleanOptions", "clean_text", "enabled_steps"]

CLEAN_STEPS: tuple[str, ...] = (
    "fix_mojibake", "nfkc", "control_chars", "strip_html", "whitespace", "lowercase", "numbers_to_words",
    "remove_special_chars", "remove_stopwords", "lemmatize", "stem",
)

_SNOWBALL = {
    "ar": "arabic", "da": "danish", "de": "german", "en": "english", "es": "spanish", "fi": "finnish",
    "fr": "french", "hu": "hungarian", "it": "italian", "nb": "norwegian", "nl": "dutch", "no": "norwegian",
    "pt": "portuguese", "ro": "romanian", "ru": "russian", "sv": "swedish",
}


def _base_language(language: str) -> str:
    """``"en-US"``, ``"en_GB"``, ``"EN"`` → ``"en"``."""
    return re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]


@dataclass(frozen=True)
class CleanOptions:
    """Which cleaning steps to apply (see the module docstring for each step and their order).

    Attributes:
        nfkc: Unicode NFKC normalisation.
        whitespace: collapse spaces within lines, drop trailing spaces and the common indentation, at most
            one blank line, no blank lines at the ends.
        control_chars: normalise line endings; drop control, escape and zero-width characters.
        strip_html: drop HTML tags, script and style content; unescape entities.
        fix_mojibake: repair wrongly decoded text with ftfy.
        lowercase: lowercase everything.
        remove_special_chars: keep only letters, digits, whitespace and ``.,!?'-``.
        numbers_to_words: spell out numbers in ``language``.
        remove_stopwords: drop English stop words (no change for other languages).
        stem: reduce words to stems (Snowball); not together with ``lemmatize``.
        lemmatize: reduce words to lemmas (simplemma); not together with ``stem``.
        language: ISO 639-1 code (``"en"``, ``"de"``, ``"ru"`` …) for the language-aware steps.

    Raises:
        ValueError: ``stem`` and ``lemmatize`` are both on, or a language-aware step that is on does not
            support ``language``.
    """

    nfkc: bool = True
    whitespace: bool = True
    control_chars: bool = True
    strip_html: bool = False
    fix_mojibake: bool = True
    lowercase: bool = False
    remove_special_chars: bool = False
    numbers_to_words: bool = False
    remove_stopwords: bool = False
    stem: bool = False
    lemmatize: bool = False
    language: str = "en"

    def __post_init__(self) -> None:
        if self.stem and self.lemmatize:
            raise ValueError("clean options 'stem' and 'lemmatize' are both on; choose one of them")
        lang = _base_language(self.language)
        if self.stem and lang not in _SNOWBALL:
            raise ValueError(f"stem: no Snowball stemmer for language {self.language!r}; "
                             f"supported: {', '.join(sorted(_SNOWBALL))}")
        if self.lemmatize and lang not in _simplemma_languages():
            raise ValueError(f"lemmatize: simplemma does not support language {self.language!r}; "
                             f"supported: {', '.join(sorted(_simplemma_languages()))}")
        if self.numbers_to_words and _num2words_language(self.language) is None:
            raise ValueError(f"numbers_to_words: num2words does not support language {self.language!r}")


# ---- 1-3: encoding, normal form, invisible characters ------------------------------------------------


def _fix_mojibake(text: str, opts: CleanOptions) -> str:
    import ftfy

    return ftfy.fix_text(text, _ftfy_config())


@lru_cache(maxsize=1)
def _ftfy_config():
    import ftfy

    # Encoding repairs only; every other ftfy fix is off so that each step does one thing.
    return ftfy.TextFixerConfig(
        unescape_html=False, remove_terminal_escapes=False, fix_latin_ligatures=False,
        fix_character_width=False, uncurl_quotes=False, fix_line_breaks=False, remove_control_chars=False,
        normalization=None, explain=False,
    )


# Left out of NFKC because folding them changes what the text says or how its language is written:
# superscripts and subscripts (mc² is not mc2), vulgar fractions (½ is not 1⁄2), ordinal indicators (1º),
# and the punctuation of Chinese and Japanese: full-width forms (，！？：（）) and the ellipsis (……).
_NFKC_KEPT = re.compile(
    "[\u00aa\u00b2\u00b3\u00b9\u00ba\u00bc-\u00be\u2025\u2026\u2070-\u209f\u2150-\u215f\u2189"
    "\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff5e]+"
)


def _nfkc(text: str, opts: CleanOptions) -> str:
    pieces, pos = [], 0
    for m in _NFKC_KEPT.finditer(text):
        pieces += [unicodedata.normalize("NFKC", text[pos:m.start()]), m.group()]
        pos = m.end()
    pieces.append(unicodedata.normalize("NFKC", text[pos:]))
    return "".join(pieces)


_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x85\u2028\u2029]")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b-\u200d\ufeff]")


def _control_chars(text: str, opts: CleanOptions) -> str:
    # Line breaks first: dropping a lone CR as a control would glue two lines together.
    text = _LINE_BREAKS.sub("\n", text)
    return _INVISIBLE.sub("", _ANSI_ESCAPE.sub("", text))


# ---- 4: HTML -----------------------------------------------------------------------------------------

_HTML_ELEMENTS = frozenset({
    "a", "abbr", "address", "area", "article", "aside", "audio", "b", "base", "bdi", "bdo", "blockquote",
    "body", "br", "button", "canvas", "caption", "center", "cite", "code", "col", "colgroup", "data",
    "datalist", "dd", "del", "details", "dfn", "dialog", "div", "dl", "dt", "em", "embed", "fieldset",
    "figcaption", "figure", "font", "footer", "form", "frame", "frameset", "h1", "h2", "h3", "h4", "h5",
    "h6", "head", "header", "hgroup", "hr", "html", "i", "iframe", "img", "input", "ins", "kbd", "label",
    "legend", "li", "link", "main", "map", "mark", "menu", "meta", "meter", "nav", "noscript", "object",
    "ol", "optgroup", "option", "output", "p", "param", "picture", "pre", "progress", "q", "rp", "rt",
    "ruby", "s", "samp", "script", "section", "select", "small", "source", "span", "strike", "strong",
    "style", "sub", "summary", "sup", "svg", "table", "tbody", "td", "template", "textarea", "tfoot",
    "th", "thead", "time", "title", "tr", "track", "tt", "u", "ul", "var", "video", "wbr"
})
_HIDDEN = frozenset({"script", "style", "noscript", "template", "head", "title"})
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "details", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
    "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead",
    "tr", "ul"
})


class _TextExtractor(HTMLParser):
    """Collects the visible text of an HTML fragment; unknown tags pass through as text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in _HTML_ELEMENTS:
            self._emit(self.get_starttag_text() or "")
        elif tag in _HIDDEN:
            self.hidden_depth += 1
        elif tag in _BLOCKS:
            self._line_break(always=tag == "br")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag not in _HTML_ELEMENTS:
            self._emit(self.get_starttag_text() or "")
        elif tag in _BLOCKS:
            self._line_break(always=tag == "br")

    def handle_endtag(self, tag: str) -> None:
        if tag not in _HTML_ELEMENTS:
            self._emit(f"</{tag}>")
        elif tag in _HIDDEN:
            self.hidden_depth = max(0, self.hidden_depth - 1)
        elif tag in _BLOCKS:
            self._line_break()

    def handle_data(self, data: str) -> None:
        self._emit(data)

    def _emit(self, text: str) -> None:
        if not self.hidden_depth:
            self.parts.append(text)

    def _line_break(self, always: bool = False) -> None:
        # A block boundary starts a new line, once: "</li><li>" is one break, not a blank line between
        # items. Each <br> is a break of its own, so "<br><br>" still leaves a blank line.
        if always or (self.parts and not self.parts[-1].endswith("\n")):
            self._emit("\n")


def _extract_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()  # flushes text held back in case it was the start of a tag
    return "".join(parser.parts)


def _strip_html(text: str, opts: CleanOptions) -> str:
    try:
        return _extract_text(text)
    except AssertionError:
        # The stdlib parser asserts on malformed declarations such as "<![junk"; read every "<!" as text.
        return _extract_text(text.replace("<!", "&lt;!"))


# ---- 5-6: layout and case ----------------------------------------------------------------------------

_HSPACE = re.compile(r"[^\S\n]+")  # any whitespace but the newline


def _tidy_line(line: str) -> str:
    """Collapse whitespace runs after the indentation and drop trailing whitespace; blank lines become empty."""
    body = line.lstrip(" \t")
    return line[: len(line) - len(body)] + _HSPACE.sub(" ", body).strip() if body.strip() else ""


def _whitespace(text: str, opts: CleanOptions) -> str:
    # Relative indentation is kept (the common margin goes, as with textwrap.dedent): code and nested
    # lists in chat data mean something by it, and collapsing it would break every Python answer.
    text = textwrap.dedent("\n".join(_tidy_line(line) for line in text.split("\n")))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _squeeze(text: str) -> str:
    """Collapse the spaces a deleting step leaves behind (doubles, and spaces at line ends)."""
    text = re.sub(r" {2,}", " ", text)
    return re.sub(r" *\n *", "\n", text).strip(" ")


def _lowercase(text: str, opts: CleanOptions) -> str:
    return text.lower()


# ---- 7: numbers --------------------------------------------------------------------------------------

# Digits touching a letter, digit or underscore are part of a word (mp3, COVID19, 3rd) and stay.
_NUMBER = re.compile(r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w]|[.,]\d)")
_MAX_SPELLED_DIGITS = 15  # longer runs are IDs, not quantities


def _num2words_language(language: str) -> str | None:
    from num2words import CONVERTER_CLASSES

    for code in (language.strip().replace("-", "_"), _base_language(language)):
        if code in CONVERTER_CLASSES:
            return code
    return None


def _spell_number(m: re.Match, lang: str) -> str:
    from num2words import num2words

    if len(m.group().split(".")[0].replace(",", "")) > _MAX_SPELLED_DIGITS:
        return m.group()  # num2words also garbles numbers this long
    try:
        return num2words(Decimal(m.group().replace(",", "")), lang=lang)
    except (ArithmeticError, InvalidOperation, NotImplementedError, OverflowError, ValueError, TypeError):
        return m.group()  # too large or not supported by the language's converter: keep the digits


def _numbers_to_words(text: str, opts: CleanOptions) -> str:
    lang = _num2words_language(opts.language) or "en"
    return _NUMBER.sub(lambda m: _spell_number(m, lang), text)


# ---- 8-11: characters and words ----------------------------------------------------------------------

_KEPT_PUNCTUATION = frozenset(".,!?'-")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")  # letters (any script), with inner apostrophes: don't


def _keep_char(ch: str) -> bool:
    if ch.isspace() or ch in _KEPT_PUNCTUATION:
        return True
    category = unicodedata.category(ch)
    return category[0] in "LM" or category == "Nd"  # letters and marks of any script, decimal digits


def _remove_special_chars(text: str, opts: CleanOptions) -> str:
    text = text.translate(_APOSTROPHES)
    return _squeeze("".join(ch if _keep_char(ch) else " " for ch in text))


def _remove_stopwords(text: str, opts: CleanOptions) -> str:
    if _base_language(opts.language) != "en":
        return text  # documented: no stop-word list for other languages
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    kept = _WORD.sub(lambda m: "" if m.group().lower() in ENGLISH_STOP_WORDS else m.group(), text)
    return _squeeze(kept)


@lru_cache(maxsize=1)
def _simplemma_languages() -> frozenset[str]:
    from simplemma.strategies.dictionaries.dictionary_factory import SUPPORTED_LANGUAGES

    return frozenset(SUPPORTED_LANGUAGES)


def _lemmatize(text: str, opts: CleanOptions) -> str:
    import simplemma

    lang = _base_language(opts.language)
    return _WORD.sub(lambda m: simplemma.lemmatize(m.group(), lang=lang), text)


@cache
def _stemmer(lang: str):
    from nltk.stem import SnowballStemmer

    return SnowballStemmer(_SNOWBALL[lang])


def _stem(text: str, opts: CleanOptions) -> str:
    stemmer = _stemmer(_base_language(opts.language))
    return _WORD.sub(lambda m: stemmer.stem(m.group()), text)


# ---- the pipeline ------------------------------------------------------------------------------------

_STEP_FUNCTIONS: dict[str, Callable[[str, CleanOptions], str]] = {
    "fix_mojibake": _fix_mojibake,
    "nfkc": _nfkc,
    "control_chars": _control_chars,
    "strip_html": _strip_html,
    "whitespace": _whitespace,
    "lowercase": _lowercase,
    "numbers_to_words": _numbers_to_words,
    "remove_special_chars": _remove_special_chars,
    "remove_stopwords": _remove_stopwords,
    "lemmatize": _lemmatize,
    "stem": _stem,
}


# Idempotent, meaning-preserving steps that may run again (see `_repair_to_fixpoint`).
_REPAIR_STEPS = frozenset({"fix_mojibake", "nfkc", "control_chars", "whitespace"})
_MAX_REPAIR_ROUNDS = 4


def enabled_steps(opts: CleanOptions) -> list[str]:
    """The names of the steps `clean_text` will apply with these options, in order."""
    return [name for name in CLEAN_STEPS if getattr(opts, name)]


def _apply(text: str, steps: list[str], opts: CleanOptions) -> str:
    for name in steps:
        text = _STEP_FUNCTIONS[name](text, opts)
    return text


def _repair_to_fixpoint(text: str, steps: list[str], opts: CleanOptions) -> str:
    """Repeat the repair steps until the text stops changing (at most `_MAX_REPAIR_ROUNDS` times).

    Each repair step is idempotent, their sequence is not: removing a control character can put a
    combining accent next to its letter (NFKC has more to do), and NFKC or whitespace folding can complete a
    mojibake pattern (``Ã`` + U+2008 becomes ``Ã `` which ftfy reads as ``à``). Repeating makes
    `clean_text` idempotent. ASCII output needs no second round: no repair step changes ASCII again.
    """
    for _ in range(_MAX_REPAIR_ROUNDS):
        repaired = _apply(text, steps, opts)
        if repaired == text or repaired.isascii():
            return repaired
        text = repaired
    return text


def clean_text(text: str, opts: CleanOptions | None = None) -> str:
    """Apply the enabled cleaning steps to a text, in the order of `CLEAN_STEPS`.

    The leading repair steps (``fix_mojibake``, ``nfkc``, ``control_chars`` and, when ``strip_html`` is
    off, ``whitespace``) are repeated as a group until the text stops changing; see `_repair_to_fixpoint`.

    Args:
        text: any text.
        opts: which steps to apply; None for the defaults (``CleanOptions()``).

    Returns:
        The cleaned text (possibly empty).
    """
    opts = opts or CleanOptions()
    steps = enabled_steps(opts)
    n_repairs = 0
    while n_repairs < len(steps) and steps[n_repairs] in _REPAIR_STEPS:
        n_repairs += 1
    text = _repair_to_fixpoint(text, steps[:n_repairs], opts)
    return _apply(text, steps[n_repairs:], opts)
