"""Text quality signals and filters for chat fine-tuning data: Gopher rules, language ID, refusals.

The repetition and content signals follow the MassiveText quality filters of Rae et al. 2021,
"Scaling Language Models: Methods, Analysis & Insights from Training Gopher", Appendix A.1
(arXiv:2112.11446). Those rules were written for web documents; `QualityThresholds` keeps the Gopher
numbers where they carry over to chat turns and relaxes the ones that reject good chat data (short turns,
markdown, code, non-Latin scripts), saying which and why on each field. `QualityThresholds.gopher()`
gives the paper's web-text settings for continued pretraining.

Words are whitespace tokens, as in the paper. Chinese and Japanese are written without spaces, so there
each ideograph or kana counts as a word (`words`); otherwise a Chinese paragraph would be "one word" and
every word-based threshold would be meaningless for it.

Everything here is a pure function on strings; datasets, recipe config and the CLI call into it.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CJK_RANGES",
    "REFUSAL_PATTERNS",
    "QualityThresholds",
    "check_text",
    "detect_language",
    "is_degenerate",
    "is_refusal",
    "quality_signals",
    "words",
]

# Scripts written without spaces between words: kana, CJK ideographs (+ extension A, compatibility,
# extensions B-F). Hangul is not here: Korean puts spaces between words.
CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"

# A CJK character (with the punctuation glued to it, as "word," keeps its comma) or a run of other
# non-space characters.
_WORD_RE = re.compile(rf"[{CJK_RANGES}][^\s\w]*|[^\s{CJK_RANGES}]+")
_PARAGRAPH_RE = re.compile(r"\n\s*\n")
_BULLETS = ("-", "*", "•", "‣", "◦", "·", "–", "—")
# Gopher's '#' ratio targets hashtag spam. In chat data '#' is mostly markdown headings ("## Step 1")
# and code comments ("# note"), where a space or another '#' follows; a hashtag is '#' then a letter.
_HASHTAG_RE = re.compile(r"(?<!#)#(?=\w)")
_ELLIPSIS_RE = re.compile(r"\.\.\.|…")


def words(text: str) -> list[str]:
    """Split text into Gopher words: whitespace tokens, except that each CJK character is one word.

    Punctuation stays attached to the word before it (``"word,"``), as in a whitespace split.

    Args:
        text: any text.

    Returns:
        The words in order.
    """
    return _WORD_RE.findall(text)


# ---------------------------------------------------------------------------------------------------
# Language identification
# ---------------------------------------------------------------------------------------------------

_IDENTIFIER: Any = None
_IDENTIFIER_LOCK = threading.Lock()


def _identifier() -> Any:
    """The py3langid identifier with normalized probabilities, loaded once (about 0.7 s) on first use."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        with _IDENTIFIER_LOCK:
            if _IDENTIFIER is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                # py3langid 0.4 loads its model with from_model_file; 0.2-0.3 named it from_pickled_model.
                load = getattr(LanguageIdentifier, "from_model_file", None) or LanguageIdentifier.from_pickled_model
                _IDENTIFIER = load(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def detect_language(text: str) -> tuple[str, float]:
    """Identify the language of a text with py3langid (offline; bundled model, 140 languages).

    Args:
        text: any text. Short texts (a few words) get low, unreliable probabilities.

    Returns:
        ``(code, probability)``: an ISO 639-1 code where the language has one (``"en"``, ``"zh"``,
        ``"ru"``), else the model's ISO 639-3 code (``"yue"``); the probability is in [0, 1].
        ``("und", 0.0)`` for text with no letters (numbers, punctuation, emoji) and where the model
        itself says "no linguistic content" (``zxx``).
    """
    if not any(ch.isalpha() for ch in text):
        return "und", 0.0
    code, prob = _identifier().classify(text)
    if code == "zxx":
        return "und", 0.0
    return code, min(1.0, max(0.0, float(prob)))


# ---------------------------------------------------------------------------------------------------
# Refusals and AI boilerplate
# ---------------------------------------------------------------------------------------------------

# Regular expressions, matched with re.search on the text after NFKC (full-width "，" becomes ","),
# lowercasing, straightening curly apostrophes and collapsing whitespace. Patterns starting with "^" must open the reply (a refusal leads with
# it); the others are boilerplate that is unambiguous anywhere ("as an AI language model"). Ordinary
# sentences such as "I can't wait to try it!" or "我无法想象…" ("I can't imagine…") must not match, so
# bare "I can't" / "我无法" / "Я не могу" only count when followed by a verb of helping or producing.
_EN_CANT = r"(?:can't|cannot|can not|won't|will not|am unable to|'m unable to|am not able to|'m not able to)"
_EN_ACTS = (r"(?:help|assist|provide|comply|fulfil|fulfill|create|generate|write|produce|answer|respond|"
            r"support|engage|give|offer|share|participate|do that|do this|complete|continue|discuss|"
            r"browse|access)")
_ZH_ACTS = r"(?:提供|回答|帮助|帮你|帮您|协助|满足|完成|生成|创作|撰写|编写|参与|给出|为您|为你|执行|进行|支持|访问|浏览)"
_RU_ACTS = (r"(?:помочь|предоставить|выполнить|ответить|создать|написать|дать|участвовать|поддержать|"
            r"сгенерировать|обсуждать|продолжить|предложить|сделать это|просматривать)")

REFUSAL_PATTERNS: dict[str, list[str]] = {
    "en": [
        # "I'm sorry, but I can't…", "I am sorry, as an AI I cannot…", "I'm afraid I can't…"
        rf"^(?:i'm|i am) (?:so |very |really |truly )?(?:sorry|afraid)\b[^.!?\n]{{0,40}}\bi\s?{_EN_CANT}",
        rf"^(?:sorry|my apologies|apologies)\b[^.!?\n]{{0,30}}\bi\s?{_EN_CANT}",
        rf"^(?:unfortunately|regrettably)\b[^.!?\n]{{0,30}}\bi\s?{_EN_CANT}",
        r"^i (?:apologize|apologise)\b[^.!?\n]{0,20}\bbut\b",
        # "I cannot help with…", "I won't provide…" — but not "I can't help but laugh".
        rf"^i {_EN_CANT} (?!help but\b){_EN_ACTS}\b",
        # "I'm not able to provide…", "I am unable to…" opening a reply.
        r"^(?:i'm|i am) (?:unable|not able) to\b",
        # Boilerplate anywhere.
        r"\bas an ai\s*,",  # "As an AI, I…" — but not "As an AI researcher…"
        r"\bas an ai(?: language)? model\b",
        r"\bas a (?:large )?language model\b",
        r"\bas an ai (?:assistant|chatbot|developed by|created by|trained by)\b",
        r"\bi(?:'m| am) (?:just |only |merely )?an ai(?: language)? model\b",
        r"\bi(?:'m| am) (?:just |only |merely )?an ai(?: assistant| chatbot)?\s*[,.;!]",
        r"\bi(?:'m| am) (?:a large language model|a language model) (?:trained|developed|created|made) by\b",
    ],
    "zh": [
        # "作为一个人工智能，…", "作为AI语言模型，…" — the comma keeps "作为人工智能的一个分支" out.
        r"作为(?:一个|一种|一名|一款)?\s*(?:由\s*openai\s*(?:训练|开发)的)?\s*(?:ai|人工智能)\s*"
        r"(?:语言模型|助手|模型|程序|聊天机器人)?\s*[，,]",
        r"作为(?:一个|一种|一款)?\s*(?:由\s*openai\s*(?:训练|开发)的)?\s*(?:大型)?语言模型\s*[，,]",
        r"我(?:只)?是(?:一个|一种|一款)?\s*由\s*openai\s*(?:训练|开发)的",
        r"我(?:只)?是(?:一个|一种|一款)?\s*(?:ai|人工智能)\s*(?:语言模型|助手|程序|聊天机器人)",
        # "抱歉，我不能…", "很抱歉，我无法…", "对不起，但我无法…" opening a reply.
        r"^(?:非常|很|十分)?(?:抱歉|对不起|不好意思)[，,。！!]?\s*(?:但是?)?\s*"
        r"(?:作为[^，,。]{1,20}[，,]\s*)?我(?:无法|不能|没有办法|不可以|没法)",
        # "我无法提供…" opening a reply; not "我无法想象…".
        rf"^我(?:无法|不能|没有办法|没法)\s*{_ZH_ACTS}",
    ],
    "ru": [
        # "Как языковая модель ИИ, я…" — the comma keeps "как ИИ меняет мир" out.
        r"\bкак (?:языковая модель(?: ии)?|(?:модель |помощник )?ии|искусственный интеллект|ии-ассистент)\s*,",
        r"\bя\s*(?:—|-)?\s*(?:всего лишь|лишь|просто|только)?\s*(?:языковая модель|ии-ассистент|модель ии)\b",
        # "Извините, но я не могу…", "К сожалению, я не могу…" opening a reply.
        r"^(?:извините|простите|прошу прощения|к сожалению|мне жаль|мне очень жаль)\b[^.!?\n]{0,30}"
        r"\bя не (?:могу|в состоянии|имею возможности)\b",
        # "Я не могу помочь…" opening a reply; not "Я не могу дождаться…".
        rf"^я не (?:могу|в состоянии) {_RU_ACTS}",
    ],
}

_REFUSAL_RE = re.compile("|".join(f"(?:{p})" for ps in REFUSAL_PATTERNS.values() for p in ps))
# Leading decoration a reply may open with before the refusal ("**I'm sorry…**", "> ", quotes).
_LEADING_NOISE = " \t\n\"'“”‘’«»*_>#-"


def _normalize_for_refusal(text: str) -> str:
    """Lowercase, straight apostrophes, single spaces, no leading markup — what the patterns expect."""
    text = unicodedata.normalize("NFKC", text).replace("’", "'").replace("‘", "'")
    return " ".join(text.lower().split()).lstrip(_LEADING_NOISE)


def is_refusal(text: str) -> bool:
    """Whether a reply is an assistant refusal or AI boilerplate, in English, Chinese or Russian.

    See `REFUSAL_PATTERNS`: refusal phrases count when they open the reply, AI boilerplate ("As an AI
    language model", "作为一个人工智能，", "Как языковая модель ИИ,") counts anywhere.

    Args:
        text: one message (normally an assistant turn).

    Returns:
        True when a pattern matches.
    """
    return _REFUSAL_RE.search(_normalize_for_refusal(text)) is not None


# ---------------------------------------------------------------------------------------------------
# Gopher signals
# ---------------------------------------------------------------------------------------------------

TOP_NGRAM_SIZES = (2, 3, 4)
DUP_NGRAM_SIZES = (5, 6, 7, 8, 9, 10)
# Fenced code blocks (an unclosed fence runs to the end of the text).
_CODE_FENCE_RE = re.compile(r"^[ \t]*```.*?(?:^[ \t]*```[^\n]*$|\Z)", re.DOTALL | re.MULTILINE)
_CJK_CHAR_RE = re.compile(f"[{CJK_RANGES}]")
_LETTER_RE = re.compile(r"[^\W\d_]")  # a word character that is not a digit or underscore: a letter


def _duplicate_fractions(items: Sequence[str]) -> tuple[float, float]:
    """(fraction of items, fraction of their characters) that repeat an earlier item (Gopher)."""
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for item in items:
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    total_chars = sum(len(item) for item in items)
    return (dup_items / len(items) if items else 0.0, dup_chars / total_chars if total_chars else 0.0)


# Odd 64-bit multiplier of the rolling n-gram hash (the golden-ratio constant); arithmetic wraps mod 2**64.
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)


def _word_hashes(toks: Sequence[str]) -> np.ndarray:
    """One well-mixed 64-bit value per word (equal words, equal values), (words,) uint64."""
    vocab: dict[str, int] = {}
    x = np.array([vocab.setdefault(w, len(vocab)) for w in toks], dtype=np.uint64) + np.uint64(1)
    # splitmix64 finalizer: spreads the small word ids over all 64 bits before the rolling hash.
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _covered_chars(lengths: np.ndarray, starts: np.ndarray, n: int) -> int:
    """Characters of the words covered by n-grams starting at `starts`, each word counted once."""
    size = len(lengths) + 1
    depth = np.cumsum(np.bincount(starts, minlength=size) - np.bincount(starts + n, minlength=size))
    return int(lengths[depth[:-1] > 0].sum())


def _top_ngram_chars(grams: np.ndarray, lengths: np.ndarray, prefix: np.ndarray, n: int) -> int:
    """Characters inside the occurrences of the most frequent n-gram (0 when no n-gram repeats).

    An n-gram seen once is no repetition; on a short turn the "most frequent" n-gram would otherwise be
    any n-gram at all. Ties go to the n-gram with more characters (the stricter reading).
    """
    uniq, first, counts = np.unique(grams, return_index=True, return_counts=True)
    if counts.size == 0 or counts.max() < 2:
        return 0
    candidates = np.flatnonzero(counts == counts.max())
    chars = prefix[first[candidates] + n] - prefix[first[candidates]]
    top = uniq[candidates[int(np.argmax(chars))]]
    return _covered_chars(lengths, np.flatnonzero(grams == top), n)


def _dup_ngram_chars(grams: np.ndarray, lengths: np.ndarray, n: int) -> int:
    """Characters inside repeats of an earlier n-gram, each character counted once.

    As in the reference reimplementation (datatrove, used for FineWeb) the first occurrence is the
    original and later ones are the duplicates: a passage pasted twice is 50% duplicated.
    """
    _, first = np.unique(grams, return_index=True)
    repeat = np.ones(grams.size, dtype=bool)
    repeat[first] = False
    return _covered_chars(lengths, np.flatnonzero(repeat), n)


def _content_lines(text: str) -> list[str]:
    """Non-blank lines that hold a letter or digit; "}", "```" or "---" lines are layout, not content."""
    return [ln.strip() for ln in text.splitlines() if any(c.isalnum() for c in ln)]


def _line_signals(text: str, prose: str) -> dict[str, float]:
    """Duplicate lines and paragraphs of the prose (count and characters); bullet and ellipsis lines."""
    paragraphs = [p.strip() for p in _PARAGRAPH_RE.split(prose) if p.strip()]
    dup_line, dup_line_chars = _duplicate_fractions(_content_lines(prose))
    dup_para, dup_para_chars = _duplicate_fractions(paragraphs)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    n_lines = len(lines) or 1
    return {
        "dup_line_frac": dup_line,
        "dup_line_char_frac": dup_line_chars,
        "dup_para_frac": dup_para,
        "dup_para_char_frac": dup_para_chars,
        "bullet_line_frac": sum(ln.startswith(_BULLETS) for ln in lines) / n_lines,
        "ellipsis_line_frac": sum(ln.endswith(("...", "…")) for ln in lines) / n_lines,
    }


def _word_signals(text: str, toks: Sequence[str]) -> dict[str, float]:
    """Counts, mean word length, alphabetic fractions."""
    n_words = len(toks)
    non_space = sum(len(w) for w in toks)
    letters = sum(map(str.isalpha, text))
    return {
        "n_chars": float(len(text)),
        "n_words": float(n_words),
        "mean_word_length": non_space / n_words if n_words else 0.0,
        "alpha_word_frac": sum(1 for w in toks if _LETTER_RE.search(w)) / n_words if n_words else 0.0,
        "non_alpha_char_frac": (non_space - letters) / non_space if non_space else 0.0,
    }


def _symbol_signals(prose: str, n_words: int) -> dict[str, float]:
    """Hashtags and ellipses per word of the prose (Gopher's symbol-to-word ratio, each symbol apart)."""
    per_word = 1 / n_words if n_words else 0.0
    hashes = len(_HASHTAG_RE.findall(prose)) * per_word
    ellipses = len(_ELLIPSIS_RE.findall(prose)) * per_word
    return {"hash_word_ratio": hashes, "ellipsis_word_ratio": ellipses,
            "symbol_word_ratio": max(hashes, ellipses)}


def _ngram_signals(prose: str, toks: Sequence[str]) -> dict[str, float]:
    """Top and duplicated n-gram character fractions of the prose, and its length in words.

    In mostly-CJK prose a word is one character, about half a Chinese word, so n-grams are 2n
    characters long there; with n characters, common 5-character terms would count as repetition.
    """
    lengths = np.array([len(w) for w in toks], dtype=np.int64)
    prefix = np.concatenate([[0], np.cumsum(lengths)])
    total = max(int(prefix[-1]), 1)
    # Each CJK word is one CJK character, so counting the characters counts those words.
    scale = 2 if 2 * len(_CJK_CHAR_RE.findall(prose)) > len(toks) else 1
    signals = {"repetition_words": len(toks) / scale}
    signals.update({f"top_{n}gram_char_frac": 0.0 for n in TOP_NGRAM_SIZES})
    signals.update({f"dup_{n}gram_char_frac": 0.0 for n in DUP_NGRAM_SIZES})
    word_hashes = grams = _word_hashes(toks)
    for size in range(2, min(max(DUP_NGRAM_SIZES) * scale, len(toks)) + 1):
        # Rolling hash: the n-gram at i extends the (n-1)-gram at i by word i+n-1. (words-n+1,)
        grams = grams[:-1] * _HASH_MULT + word_hashes[size - 1:]
        n, rest = divmod(size, scale)
        if rest == 0 and n in TOP_NGRAM_SIZES:
            signals[f"top_{n}gram_char_frac"] = _top_ngram_chars(grams, lengths, prefix, size) / total
        if rest == 0 and n in DUP_NGRAM_SIZES:
            signals[f"dup_{n}gram_char_frac"] = _dup_ngram_chars(grams, lengths, size) / total
    return signals


def quality_signals(text: str) -> dict[str, float]:
    """Gopher quality signals of one text (Rae et al. 2021, arXiv:2112.11446, Appendix A.1, Table A1).

    Words are `words` (whitespace tokens; each CJK character is a word). Lines are non-blank lines,
    paragraphs are blocks separated by blank lines, both stripped. Character fractions of n-grams are
    over the characters of all words (whitespace excluded).

    Adapted to chat data (each documented where it is computed): repetition and symbol signals are
    measured on the prose, with fenced code blocks (```) left out, because code repeats by design and
    Gopher's web data had no code to calibrate on; lines with no letter or digit ("}", "---") are layout
    and never count as duplicate lines; '#' counts only as a hashtag ('#' then a letter or digit), not
    as a markdown heading or comment marker; in mostly-CJK text n-grams are 2n characters long.

    Args:
        text: one message or document.

    Returns:
        ``n_chars``, ``n_words``, ``mean_word_length`` (non-space characters per word);
        ``repetition_words`` (words of the prose, CJK characters counting half);
        ``dup_line_frac`` / ``dup_para_frac`` (share of lines / paragraphs that repeat an earlier one)
        and ``dup_line_char_frac`` / ``dup_para_char_frac`` (their share of characters);
        ``top_{n}gram_char_frac`` for n = 2, 3, 4 (characters inside the occurrences of the most
        frequent n-gram, 0 when no n-gram repeats); ``dup_{n}gram_char_frac`` for n = 5..10
        (characters inside repeats of an earlier n-gram, each counted once); ``hash_word_ratio`` and
        ``ellipsis_word_ratio`` (hashtags and '...' or '…' per word of prose) and their max
        ``symbol_word_ratio``; ``alpha_word_frac`` (words with at least one letter);
        ``non_alpha_char_frac`` (non-space characters that are not letters);
        ``bullet_line_frac`` and ``ellipsis_line_frac`` (lines that start with a bullet / end with an
        ellipsis).
    """
    prose = _CODE_FENCE_RE.sub("\n", text)
    prose_words = words(prose)
    signals = _word_signals(text, words(text))
    signals.update(_line_signals(text, prose))
    signals.update(_symbol_signals(prose, len(prose_words)))
    signals.update(_ngram_signals(prose, prose_words))
    return signals


# ---------------------------------------------------------------------------------------------------
# Thresholds and checks
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityThresholds:
    """Limits for `check_text`. Defaults: Gopher's rules (Rae et al. 2021, Table A1) adapted to chat turns.

    Attributes:
        min_chars: fewest characters. 1 (Gopher has no character bound): a one-word answer ("Yes.") is
            legitimate in chat data.
        max_chars: most characters. 100,000: beyond any chat turn; catches pasted dumps.
        min_words: fewest words. Gopher: 50 for web documents; 1 here because chat turns are short.
        max_words: most words. Gopher: 100,000; 20,000 here (longer than any model's context we train).
        max_dup_line_frac: share of lines repeating an earlier line. Gopher: 0.30.
        max_dup_line_char_frac: share of characters in repeated lines. Gopher: 0.20.
        max_dup_para_frac: share of paragraphs repeating an earlier one. Gopher: 0.30.
        max_dup_para_char_frac: share of characters in repeated paragraphs. Gopher: 0.20.
        max_top_ngram_frac: ``{n: limit}`` on the share of characters in the most frequent n-gram.
            Gopher: {2: 0.20, 3: 0.18, 4: 0.16}.
        max_dup_ngram_frac: ``{n: limit}`` on the share of characters in repeated n-grams.
            Gopher: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}.
        min_words_for_ngram_checks: the n-gram rules apply to texts with at least this many words of
            prose (`quality_signals`' ``repetition_words``). 50: Gopher's rules only ever saw documents of
            50+ words; on a two-sentence answer one repeated phrase ("a named location in memory that")
            is already 20% of the characters.
        max_symbol_word_ratio: hashtags or ellipses per word (each symbol separately). Gopher: 0.10.
            Markdown headings, code comments and fenced code are not counted (see `quality_signals`).
        min_alpha_word_frac: share of words with at least one letter. Gopher: 0.80 for web text; 0 here
            because chat answers are often numbers, formulas or code ("42", "x = y + 1").
        max_non_alpha_char_frac: share of non-space characters that are not letters. Not a Gopher rule;
            1.0 (off) by default because code and math answers are mostly symbols.
        min_mean_word_length: Gopher: 3 for web text. 0 (off) here: CJK words are one character.
        max_mean_word_length: Gopher: 10 for web text. None (off) here: code, URLs and identifiers
            are long "words" in good chat data.
        max_bullet_line_frac: share of lines starting with a bullet. Gopher: 0.90; 1.0 (off) here
            because a chat answer is often a pure list.
        max_ellipsis_line_frac: share of lines ending with an ellipsis. Gopher: 0.30; 1.0 (off) here
            because a one-line turn ending with "..." would be 100%.
        languages: keep only these languages (codes of `detect_language`); None keeps all.
        min_language_confidence: a text is rejected for its language only when the identifier names a
            language outside `languages` with at least this probability. Texts it is unsure about
            (short replies, code) and texts without letters are kept: on chat data language ID of a
            two-word turn is noise.
        drop_refusals: reject assistant turns that `is_refusal` (off by default: whether refusals are
            wanted depends on the task).
    """

    min_chars: int = 1
    max_chars: int = 100_000
    min_words: int = 1
    max_words: int = 20_000
    max_dup_line_frac: float = 0.30
    max_dup_line_char_frac: float = 0.20
    max_dup_para_frac: float = 0.30
    max_dup_para_char_frac: float = 0.20
    max_top_ngram_frac: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_dup_ngram_frac: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    min_words_for_ngram_checks: int = 50
    max_symbol_word_ratio: float = 0.10
    min_alpha_word_frac: float = 0.0
    max_non_alpha_char_frac: float = 1.0
    min_mean_word_length: float = 0.0
    max_mean_word_length: float | None = None
    max_bullet_line_frac: float = 1.0
    max_ellipsis_line_frac: float = 1.0
    languages: tuple[str, ...] | None = None
    min_language_confidence: float = 0.5
    drop_refusals: bool = False

    @classmethod
    def gopher(cls, **overrides: Any) -> QualityThresholds:
        """The paper's settings for web documents (continued pretraining on raw text), plus `overrides`.

        Not included: Gopher's stop-word rule (at least two of "the, be, to, of, and, that, have, with"),
        which only makes sense for English.
        """
        web = {"min_words": 50, "max_words": 100_000, "min_alpha_word_frac": 0.80,
               "min_mean_word_length": 3.0, "max_mean_word_length": 10.0,
               "max_bullet_line_frac": 0.90, "max_ellipsis_line_frac": 0.30}
        return cls(**{**web, **overrides})


def _pct(x: float) -> str:
    return f"{x:.0%}"


def _check_size(s: dict[str, float], th: QualityThresholds) -> list[str]:
    chars, n_words = int(s["n_chars"]), int(s["n_words"])
    out = []
    if chars < th.min_chars:
        out.append(f"too short ({chars} chars < {th.min_chars})")
    if chars > th.max_chars:
        out.append(f"too long ({chars} chars > {th.max_chars})")
    if n_words < th.min_words:
        out.append(f"too few words ({n_words} < {th.min_words})")
    if n_words > th.max_words:
        out.append(f"too many words ({n_words} > {th.max_words})")
    return out


def _check_lines(s: dict[str, float], th: QualityThresholds) -> list[str]:
    limits = [("dup_line_frac", th.max_dup_line_frac, "duplicate lines"),
              ("dup_line_char_frac", th.max_dup_line_char_frac, "characters in duplicate lines"),
              ("dup_para_frac", th.max_dup_para_frac, "duplicate paragraphs"),
              ("dup_para_char_frac", th.max_dup_para_char_frac, "characters in duplicate paragraphs")]
    return [f"repetitive ({label} {_pct(s[key])} > {_pct(limit)})"
            for key, limit, label in limits if s[key] > limit]


def _check_ngrams(s: dict[str, float], th: QualityThresholds) -> list[str]:
    out: list[str] = []
    if s["repetition_words"] < th.min_words_for_ngram_checks:
        return out
    for n, limit in sorted(th.max_top_ngram_frac.items()):
        value = s.get(f"top_{n}gram_char_frac")
        if value is not None and value > limit:
            out.append(f"repetitive (top {n}-gram {_pct(value)} of characters > {_pct(limit)})")
    for n, limit in sorted(th.max_dup_ngram_frac.items()):
        value = s.get(f"dup_{n}gram_char_frac")
        if value is not None and value > limit:
            out.append(f"repetitive (duplicated {n}-grams {_pct(value)} of characters > {_pct(limit)})")
    return out


def _check_content(s: dict[str, float], th: QualityThresholds) -> list[str]:
    out = []
    for key, symbol in (("hash_word_ratio", "'#'"), ("ellipsis_word_ratio", "'...'")):
        if s[key] > th.max_symbol_word_ratio:
            out.append(f"symbols ({symbol} {s[key]:.2f} per word > {th.max_symbol_word_ratio:.2f})")
    if s["alpha_word_frac"] < th.min_alpha_word_frac:
        out.append(f"too few words with letters ({_pct(s['alpha_word_frac'])} < {_pct(th.min_alpha_word_frac)})")
    if s["non_alpha_char_frac"] > th.max_non_alpha_char_frac:
        out.append(f"too many non-letter characters ({_pct(s['non_alpha_char_frac'])} "
                   f"> {_pct(th.max_non_alpha_char_frac)})")
    mean, hi = s["mean_word_length"], th.max_mean_word_length
    if mean < th.min_mean_word_length or (hi is not None and mean > hi):
        out.append(f"mean word length {mean:.1f} outside [{th.min_mean_word_length:g}, {hi if hi else 'inf'}]")
    if s["bullet_line_frac"] > th.max_bullet_line_frac:
        out.append(f"bullet lines {_pct(s['bullet_line_frac'])} > {_pct(th.max_bullet_line_frac)}")
    if s["ellipsis_line_frac"] > th.max_ellipsis_line_frac:
        out.append(f"lines ending in '...' {_pct(s['ellipsis_line_frac'])} > {_pct(th.max_ellipsis_line_frac)}")
    return out


def _check_language(text: str, th: QualityThresholds) -> list[str]:
    if th.languages is None:
        return []
    code, prob = detect_language(text)
    if code == "und" or code in th.languages or prob < th.min_language_confidence:
        return []
    return [f"language '{code}' not in [{', '.join(th.languages)}] (p={prob:.2f})"]


_CHECKS: tuple[Callable[[dict[str, float], QualityThresholds], list[str]], ...] = (
    _check_size, _check_lines, _check_ngrams, _check_content)


def check_text(text: str, th: QualityThresholds, role: str = "assistant") -> list[str]:
    """Why a message fails the quality thresholds.

    Args:
        text: one message.
        th: the thresholds.
        role: the message's role; refusals are only looked for in ``"assistant"`` turns (a user saying
            "I can't…" is ordinary).

    Returns:
        Human-readable reasons, e.g. ``"too short (3 chars < 10)"``,
        ``"repetitive (duplicate lines 45% > 30%)"``, ``"refusal"``,
        ``"language 'de' not in [en] (p=0.99)"``; ``[]`` when the text passes. A degenerate text
        (`is_degenerate`) gets that one reason only.
    """
    degenerate = is_degenerate(text)
    if degenerate is not None:
        return [f"degenerate ({degenerate})"]
    signals = quality_signals(text)
    reasons = [reason for check in _CHECKS for reason in check(signals, th)]
    reasons += _check_language(text, th)
    if th.drop_refusals and role == "assistant" and is_refusal(text):
        reasons.append("refusal")
    return reasons


# ---------------------------------------------------------------------------------------------------
# Degenerate texts
# ---------------------------------------------------------------------------------------------------

_MIN_REPEATS = 5
# The whole text (whitespace removed) is one short unit repeated: "aaaaa", "hahahahaha", "ha ha ha ha ha".
_PERIODIC_RE = re.compile(rf"(.{{1,8}}?)\1{{{_MIN_REPEATS - 1},}}", re.DOTALL)


def _repeated_token(toks: list[str]) -> str | None:
    """The token when a text is one token (ignoring case and punctuation) repeated ≥ 5 times."""
    cleaned = {t.strip(".,!?;:…'\"()[]{}-").lower() for t in toks}
    if len(toks) >= _MIN_REPEATS and len(cleaned) == 1:
        return cleaned.pop() or toks[0]
    return None


def is_degenerate(text: str) -> str | None:
    """Why a text is degenerate (no content worth training on), or None.

    Degenerate: empty; whitespace only; no letters or digits (punctuation, symbols, emoji); one
    character repeated ("aaaaa"); one token repeated (``"ha ha ha ha ha"``, ``"hahahahaha"``). A
    repetition needs at least 5 copies so that "aaa" or "no no no" stay legitimate; a single character
    ("A", "7") is a legitimate answer.

    Args:
        text: one message.

    Returns:
        A short reason (``"empty"``, ``"whitespace only"``, ``"no letters or digits"``,
        ``"one character repeated ('a' × 7)"``, ``"one token repeated ('ha' × 5)"``) or None.
    """
    if not text:
        return "empty"
    if not text.strip():
        return "whitespace only"
    if not any(c.isalnum() for c in text):
        return "no letters or digits"
    squeezed = "".join(text.split()).lower()
    token, count = _repeated_token(text.split()), len(text.split())
    periodic = _PERIODIC_RE.fullmatch(squeezed)
    if token is None and periodic is not None:
        token = periodic.group(1)
        count = len(squeezed) // len(token)
    if token is None:
        return None
    if len(token) == 1:
        return f"one character repeated ({token!r} × {len(squeezed)})"
    return f"one token repeated ({token!r} × {count})"
