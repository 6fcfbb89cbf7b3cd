"""Quality signals (Gopher), thresholds with reasons, refusals, language ID and degenerate texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data import quality
from tunelab.data.quality import (
    QualityThresholds,
    check_text,
    detect_language,
    is_degenerate,
    is_refusal,
    quality_signals,
    words,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAREGPT_ZH = SHARED_DATA / "sharegpt_zh_1k" / "sharegpt_zh_1K_format.jsonl"


def _prose(n_words: int) -> str:
    """n distinct words: no repeated n-gram, so every repetition signal is 0."""
    return " ".join(f"word{i}" for i in range(n_words))


# ---------------------------------------------------------------------------------------------------
# Words and signals on hand-computed examples
# ---------------------------------------------------------------------------------------------------


def test_words_are_whitespace_tokens_and_cjk_characters():
    assert words("Hello, world!  a\tb\nc") == ["Hello,", "world!", "a", "b", "c"]
    assert words("我喜欢Python编程。") == ["我", "喜", "欢", "Python", "编", "程。"]
    assert words("") == []


def test_duplicate_lines_by_count_and_characters():
    s = quality_signals("a b\nc d\na b\neeee f")
    # Lines: "a b", "c d", "a b", "eeee f" -> one repeat of 4 lines; 3 of 3+3+3+6 = 15 characters.
    assert s["dup_line_frac"] == pytest.approx(1 / 4)
    assert s["dup_line_char_frac"] == pytest.approx(3 / 15)


def test_lines_without_letters_or_digits_are_layout_not_duplicates():
    s = quality_signals("if x:\n}\n}\n}\n---\n---\nreturn y")
    assert s["dup_line_frac"] == 0.0


def test_duplicate_paragraphs():
    s = quality_signals("para one\n\npara two\n\npara one")
    assert s["dup_para_frac"] == pytest.approx(1 / 3)
    assert s["dup_para_char_frac"] == pytest.approx(8 / 24)


def test_top_ngram_character_fraction():
    # Words: the cat sat the cat ran (3 characters each, 18 in all). "the cat" occurs twice and covers
    # words 0, 1, 3, 4 = 12 characters; no 3-gram repeats.
    s = quality_signals("the cat sat the cat ran")
    assert s["top_2gram_char_frac"] == pytest.approx(12 / 18)
    assert s["top_3gram_char_frac"] == 0.0


def test_no_repeated_ngram_means_zero_top_fraction():
    # A short turn's "most frequent" 2-gram would otherwise be the whole text.
    assert quality_signals("Thank you")["top_2gram_char_frac"] == 0.0


def test_duplicated_ngram_character_fraction_counts_repeats_once():
    # a b c d e f a b c d e g: the 5-gram "a b c d e" repeats at word 6 -> 5 of 12 characters.
    s = quality_signals("a b c d e f a b c d e g")
    assert s["dup_5gram_char_frac"] == pytest.approx(5 / 12)
    assert s["dup_6gram_char_frac"] == 0.0
    # Overlapping repeats: 7 x "a" has the same 5-gram at 0, 1, 2; repeats at 1 and 2 cover words 1-6
    # (6 of 7 characters), not 10 characters.
    assert quality_signals("a a a a a a a")["dup_5gram_char_frac"] == pytest.approx(6 / 7)


def test_symbol_ratios_count_hashtags_and_ellipses_not_headings():
    s = quality_signals("#ai #ml rocks")
    assert s["hash_word_ratio"] == pytest.approx(2 / 3)
    assert quality_signals("## Heading\n\nsome text here\n# comment")["hash_word_ratio"] == 0.0
    e = quality_signals("wait... what… ok")
    assert e["ellipsis_word_ratio"] == pytest.approx(2 / 3)
    assert e["symbol_word_ratio"] == pytest.approx(2 / 3)


def test_alphabetic_signals_and_mean_word_length():
    s = quality_signals("abc 123 x1 !!")
    assert s["alpha_word_frac"] == pytest.approx(2 / 4)  # abc, x1
    assert s["non_alpha_char_frac"] == pytest.approx(6 / 10)  # 123, 1, !! of 10 characters
    assert s["mean_word_length"] == pytest.approx(10 / 4)
    assert s["n_words"] == 4 and s["n_chars"] == 13


def test_bullet_and_ellipsis_lines():
    s = quality_signals("- one\n- two\nthree...\nfour")
    assert s["bullet_line_frac"] == pytest.approx(2 / 4)
    assert s["ellipsis_line_frac"] == pytest.approx(1 / 4)


def test_fenced_code_is_left_out_of_repetition_signals():
    text = "Here is the fix:\n```python\nx = 1\nx = 1\nx = 1\n```\nDone."
    s = quality_signals(text)
    assert s["dup_line_frac"] == 0.0 and s["top_2gram_char_frac"] == 0.0
    assert s["n_words"] == len(words(text))  # counts still see the whole text


def test_cjk_ngrams_are_two_characters_per_word():
    # "人工智能技术" (6 characters) repeats: a 3-word phrase in Chinese, so no duplicated "5-gram"
    # (10 characters), but the top "2-gram" (4 characters) repeats.
    s = quality_signals("人工智能技术改变了世界。我们研究人工智能技术的未来发展。")
    assert s["dup_5gram_char_frac"] == 0.0
    assert s["top_2gram_char_frac"] > 0.0
    long_repeat = quality_signals("今天我们一起去公园散步吧。明天再说。今天我们一起去公园散步吧。")
    assert long_repeat["dup_5gram_char_frac"] > 0.3


def test_empty_text_signals_are_zero():
    s = quality_signals("")
    assert all(v == 0.0 for v in s.values())


# ---------------------------------------------------------------------------------------------------
# Each threshold triggers with its reason
# ---------------------------------------------------------------------------------------------------


def test_default_thresholds_keep_ordinary_chat_turns():
    th = QualityThresholds()
    for text in ["Yes.", "42", "A", "Sure! Here is how to do it: first open the file, then save it.",
                 "def add(a, b):\n    return a + b", "是的，没错。", "Да, конечно.",
                 "```html\n<tr>\n</tr>\n<tr>\n</tr>\n```", "I can't wait to try it!"]:
        assert check_text(text, th) == [], text


@pytest.mark.parametrize(("th", "text", "reason"), [
    (QualityThresholds(min_chars=10), "Hi there", "too short (8 chars < 10)"),
    (QualityThresholds(max_chars=5), "Hi there", "too long (8 chars > 5)"),
    (QualityThresholds(min_words=3), "Hi there", "too few words (2 < 3)"),
    (QualityThresholds(max_words=1), "Hi there", "too many words (2 > 1)"),
    (QualityThresholds(), "alpha beta\nalpha beta\ngamma delta", "repetitive (duplicate lines 33% > 30%)"),
    (QualityThresholds(), "alpha beta\nalpha beta\ngamma delta",
     "repetitive (characters in duplicate lines 32% > 20%)"),
    (QualityThresholds(), "one two\n\nthree\n\none two", "repetitive (duplicate paragraphs 33% > 30%)"),
    (QualityThresholds(), "one two\n\nthree\n\none two", "repetitive (characters in duplicate paragraphs 37% > 20%)"),
    (QualityThresholds(min_alpha_word_frac=0.8), "42 17 99 apples", "too few words with letters (25% < 80%)"),
    (QualityThresholds(max_non_alpha_char_frac=0.5), "1234 ab", "too many non-letter characters (67% > 50%)"),
    (QualityThresholds(), "#one #two three", "symbols ('#' 0.67 per word > 0.10)"),
    (QualityThresholds(), "so... then... ok", "symbols ('...' 0.67 per word > 0.10)"),
    (QualityThresholds(min_mean_word_length=3), "a b c", "mean word length 1.0 outside [3, inf]"),
    (QualityThresholds(max_bullet_line_frac=0.9), "- a\n- b", "bullet lines 100% > 90%"),
    (QualityThresholds(max_ellipsis_line_frac=0.3), "hmm...\nwell...\nok", "lines ending in '...' 67% > 30%"),
])
def test_each_threshold_gives_its_reason(th, text, reason):
    assert reason in check_text(text, th)


def test_duplicate_paragraph_reason():
    text = "one two\n\nthree four five\n\none two\n\nsix"
    assert "repetitive (duplicate paragraphs 25% > 20%)" not in check_text(text, QualityThresholds())
    assert check_text(text, QualityThresholds(max_dup_para_frac=0.2, max_dup_line_frac=1.0,
                                              max_dup_line_char_frac=1.0, max_dup_para_char_frac=1.0)) == [
        "repetitive (duplicate paragraphs 25% > 20%)"]


def test_ngram_rules_apply_from_fifty_words():
    looping = "the model said the same thing again and " * 8  # 64 words, one 8-word loop
    reasons = check_text(looping, QualityThresholds())
    # Top 2-gram: "thing again" (10 of the loop's 32 characters) 8 times -> 31%. Every 5-gram from
    # word 8 on repeats an earlier one: 7 of 8 loops -> 88%.
    assert "repetitive (top 2-gram 31% of characters > 20%)" in reasons
    assert "repetitive (duplicated 5-grams 88% of characters > 15%)" in reasons
    # A two-sentence answer with a parallel phrase is not judged by web-document n-gram rules...
    short = ("A variable is a named location in memory that stores values that can be changed. "
             "A constant is a named location in memory that stores a fixed value.")
    assert check_text(short, QualityThresholds()) == []
    # ...unless asked to.
    assert any("duplicated 5-grams" in r for r in check_text(short, QualityThresholds(min_words_for_ngram_checks=0)))


def test_top_and_dup_ngram_limits_are_configurable():
    looping = "the model said the same thing again and " * 8
    th = QualityThresholds(max_top_ngram_frac={}, max_dup_ngram_frac={10: 0.95},
                           max_dup_line_frac=1.0, max_dup_line_char_frac=1.0)
    assert check_text(looping, th) == []


def test_ordinary_long_text_passes_ngram_rules():
    assert check_text(_prose(200), QualityThresholds()) == []


def test_language_filter():
    th = QualityThresholds(languages=("en",))
    assert check_text("Ich habe heute keine Zeit, weil ich noch arbeiten muss.", th) == [
        "language 'de' not in [en] (p=1.00)"]
    assert check_text("The weather is lovely today, so we are going for a walk in the park.", th) == []
    # Too short to tell (low probability) and no letters at all: kept, not guessed at.
    assert check_text("Paris", th) == []
    assert check_text("12 + 30 = 42", th) == []
    assert check_text("今天天气很好，我们去公园散步吧。", QualityThresholds(languages=("zh", "en"))) == []


def test_refusals_only_when_asked_and_only_for_the_assistant():
    text = "I'm sorry, but I can't help with that."
    assert check_text(text, QualityThresholds()) == []
    assert check_text(text, QualityThresholds(drop_refusals=True)) == ["refusal"]
    assert check_text(text, QualityThresholds(drop_refusals=True), role="user") == []


def test_degenerate_text_gets_one_reason():
    assert check_text("", QualityThresholds(min_chars=10)) == ["degenerate (empty)"]
    assert check_text("ha ha ha ha ha", QualityThresholds()) == ["degenerate (one token repeated ('ha' × 5))"]


def test_gopher_preset_is_the_paper_web_setting():
    th = QualityThresholds.gopher()
    assert th.min_words == 50 and th.max_words == 100_000 and th.min_alpha_word_frac == 0.8
    assert th.min_mean_word_length == 3 and th.max_mean_word_length == 10
    assert "too few words (2 < 50)" in check_text("Hi there", th)
    assert QualityThresholds.gopher(min_words=5).min_words == 5


# ---------------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "I’m sorry, but I can’t assist with that request.",
    "**I'm sorry, but I cannot do that.**",
    "I am sorry, as an AI I cannot provide medical advice.",
    "Sorry, I can't assist with creating malware.",
    "I cannot help with hacking into accounts.",
    "I won't provide instructions for that.",
    "I'm not able to provide legal advice.",
    "I am unable to browse the internet.",
    "I apologize, but I cannot fulfill this request.",
    "Unfortunately, I cannot provide that information.",
    "As an AI language model, I don't have personal opinions.",
    "Sure. Keep in mind that as an AI language model I have no feelings, but here is a poem.",
    "As an AI, I do not have a body.",
    "I'm just an AI, I don't have preferences.",
])
def test_english_refusals(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "I can't wait to try it!",
    "I can't help but laugh at this joke.",
    "I'm sorry to hear about your loss. Here are some tips that may help.",
    "Here is the code. I cannot stress enough how important tests are.",
    "She said: I'm sorry, but I can't come tonight.",
    "As an AI researcher, I love this paper.",
    "I'm an AI engineer at a startup.",
    "The sentence 'I cannot swim' is in the present tense.",
])
def test_english_non_refusals(text):
    assert not is_refusal(text)


@pytest.mark.parametrize("text", [
    "作为一个人工智能，我没有个人观点。",
    "作为AI语言模型，我无法访问互联网。",
    "我无法提供这方面的帮助。",
    "抱歉，我不能回答这个问题。",
    "很抱歉，我无法完成这个请求。",
    "我是由OpenAI训练的语言模型，因此我没有个人经验。",
])
def test_chinese_refusals(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "我无法想象没有音乐的生活。",
    "作为人工智能的一个分支，机器学习发展迅速。",
    "他说：很抱歉，我无法参加明天的会议。",
    "我是人工智能专业的学生。",
])
def test_chinese_non_refusals(text):
    assert not is_refusal(text)


@pytest.mark.parametrize("text", [
    "Как языковая модель ИИ, я не имею личного мнения.",
    "Я не могу помочь с этим запросом.",
    "Извините, но я не могу выполнить эту просьбу.",
    "К сожалению, я не могу предоставить эту информацию.",
])
def test_russian_refusals(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "Я не могу дождаться, чтобы попробовать!",
    "Как ИИ меняет мир: обзор исследований.",
    "Он сказал: извините, но я не могу прийти.",
    "Мне жаль, что так вышло. Вот несколько советов.",
])
def test_russian_non_refusals(text):
    assert not is_refusal(text)


def test_refusal_patterns_are_documented_per_language():
    assert set(quality.REFUSAL_PATTERNS) == {"en", "zh", "ru"}
    assert all(quality.REFUSAL_PATTERNS[lang] for lang in quality.REFUSAL_PATTERNS)


# ---------------------------------------------------------------------------------------------------
# Language identification
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "code"), [
    ("The weather is lovely today, so we are going for a walk in the park.", "en"),
    ("今天天气很好，我们去公园散步吧。", "zh"),
    ("Сегодня хорошая погода, поэтому мы идём гулять в парк.", "ru"),
    ("Ich habe heute keine Zeit, weil ich noch arbeiten muss.", "de"),
    ("Je voudrais un café et un croissant, s'il vous plaît.", "fr"),
])
def test_detect_language_on_sentences(text, code):
    lang, prob = detect_language(text)
    assert lang == code
    assert 0.5 < prob <= 1.0


def test_detect_language_without_letters_is_undetermined():
    assert detect_language("12345 !!! 3.14") == ("und", 0.0)
    assert detect_language("") == ("und", 0.0)


def test_identifier_is_built_once():
    detect_language("hello there my friend")
    assert quality._identifier() is quality._identifier()


# ---------------------------------------------------------------------------------------------------
# Degenerate texts
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("  \n\t ", "whitespace only"),
    ("?!... ---", "no letters or digits"),
    ("\u200b", "no letters or digits"),
    ("aaaaaaa", "one character repeated ('a' × 7)"),
    ("a a a a a", "one character repeated ('a' × 5)"),
    ("ha ha ha ha ha", "one token repeated ('ha' × 5)"),
    ("Ha, ha, ha, ha, ha!", "one token repeated ('ha' × 5)"),
    ("hahahahaha", "one token repeated ('ha' × 5)"),
])
def test_degenerate(text, reason):
    assert is_degenerate(text) == reason


@pytest.mark.parametrize("text", ["A", "7", "42", "no no no", "ha ha ha ha", "aaa", "Hello there", "好的"])
def test_not_degenerate(text):
    assert is_degenerate(text) is None


# ---------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_sharegpt_zh_assistant_turns_are_mostly_chinese():
    if not SHAREGPT_ZH.exists():
        pytest.skip(f"{SHAREGPT_ZH} not present")
    turns = []
    with SHAREGPT_ZH.open(encoding="utf-8") as f:
        for line in f:
            turns += [t["value"] for t in json.loads(line)["conversations"] if t["from"] == "gpt"]
            if len(turns) >= 100:
                break
    langs = [detect_language(t)[0] for t in turns[:100]]
    assert langs.count("zh") >= 80, langs
    # The default chat thresholds keep the bulk of real assistant turns.
    rejected = sum(bool(check_text(t, QualityThresholds())) for t in turns[:100])
    assert rejected <= 20
