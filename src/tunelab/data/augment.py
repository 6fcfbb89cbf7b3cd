"""Data augmentation: rule-based rewrites (EDA) and model-written rows (paraphrase, self-instruct, back-translation).

Ops (``data.curate.augment.ops``; each writes new rows and keeps every source row):

* ``synonym``, ``insert``, ``swap``, ``delete`` — EDA (Wei & Zou 2019): replace ``n`` words by a WordNet
  synonym, insert a synonym of a random word at a random position ``n`` times, swap two words ``n`` times,
  delete each word with probability ``alpha``; ``n = max(1, int(alpha * words))``. Deterministic: the random
  state is derived from the seed, the op, the copy number and the row's content (not its position or file
  name), so the same input and seed give byte-identical rows. Text that must not change is never touched:
  fenced and inline code, code-looking lines, URLs, e-mail addresses, placeholders (``<EMAIL>``, ``{name}``),
  numbers and any token that is not a plain word.
* ``paraphrase`` — the generator rewrites each turn of ``roles`` keeping its meaning; a rewrite that is
  empty, unchanged, too short or long against its source, or too far from it (ROUGE-L) is rejected.
* ``self_instruct`` (Wang et al. 2022) — the generator sees ``seed_examples`` instructions sampled from the
  data (optionally only the rows with the best ``score``; later prompts also show some accepted generated
  ones), writes a new instruction, then answers it. Instructions that are empty, too short or long, contain a
  keyword a text model cannot serve (image, graph, file, ...), or have ROUGE-L >= ``max_similarity`` with any
  existing or earlier instruction are rejected (the paper's filters).
* ``back_translate`` (instruction back-translation, Humpback, Li et al. 2023) — for each final assistant
  answer or plain-text document, the generator writes the instruction that the text answers; the pair
  (instruction, text) is a new chat row.

Every new row carries ``synthetic = {"op", "source", "generator"}`` in its ``raw`` (written to data.jsonl;
originals carry none), then goes through the same quality filter (`curate.step_filter` with the recipe's
``filter`` settings, also checking the turns a model wrote) and exact/near dedup against originals and other
new rows (originals always win a cluster). Every dropped candidate is a `Reject` with step ``augment``.
Counts: ``rows_in + generated == kept + rejected``; with ``keep_originals`` (default) ``kept`` is the source
rows plus the accepted new ones and ``rejected`` the dropped candidates.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from tunelab.config.specs import AugmentSpec, CurateSpec
from tunelab.data.curate import StepReport, example_text, step_filter
from tunelab.data.records import Example, Reject
from tunelab.errors import TunelabError

__all__ = ["LLM_OPS", "RULE_OPS", "eda", "rouge_l", "step_augment"]

RULE_OPS = ("synonym", "insert", "swap", "delete")
LLM_OPS = ("paraphrase", "self_instruct", "back_translate")

# EDA draws from every sense, which often brings in a rare one ('quick' -> 'spry'); the first synonyms in
# WordNet's sense-frequency order keep the meaning more often.
_TOP_SYNONYMS = 5
_INSERT_TRIES = 10  # as in the EDA code: give up on a word without synonyms after this many draws
_MAX_SEED_CHARS = 1000  # self-instruct examples longer than this would crowd a small model's prompt
_MAX_SOURCE_CHARS = 6000  # back-translation shows at most this much of a document (fits a 2k-token window)
_INSTRUCTION_TOKENS = 128  # an instruction is a sentence or a short paragraph; bounds a rambling model's cost

# ------------------------------------------------------------------------------------------ tokenizing

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_PROTECTED = re.compile(
    r"(?P<fence>(?:```|~~~).*?(?:```|~~~|\Z))"  # fenced code (to the end of the text when unclosed)
    r"|(?P<inline>`[^`\n]+`)"
    r"|(?P<url>\b(?:https?|ftp)://\S+|\bwww\.\S+)"
    r"|(?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"
    r"|(?P<placeholder><[A-Z][A-Z0-9_]*>|\{\{?\s*\w+\s*\}?\}|\[[A-Z][A-Z0-9_]*\])",
    re.S,
)
# A line that looks like code: indented, or with code punctuation, a call, or a leading keyword.
_CODE_LINE = re.compile(r"^(?:\t| {2,}\S)|[{};=]|\w\(|^\s*(?:def|class|import|from|return|#include|SELECT)\b")
_WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")
_AFFIX = re.compile(r"^([\"'(\[]*)(.*?)([\"'.,;:!?)\]]*)$", re.S)


@dataclass
class _Tok:
    pre: str  # leading punctuation ( " ' ( [ )
    core: str  # the word, or the whole protected span
    post: str  # trailing punctuation
    sep: str  # whitespace that follows
    free: bool  # a plain word that ops may change

    def render(self) -> str:
        return f"{self.pre}{self.core}{self.post}{self.sep}"


def _protected_spans(text: str) -> list[tuple[int, int]]:
    spans = [m.span() for m in _PROTECTED.finditer(text)]
    spans += [m.span() for m in re.finditer(r"[^\n]+", text) if _CODE_LINE.search(m.group())]
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def _word_tokens(segment: str) -> list[_Tok]:
    out = []
    for m in re.finditer(r"(\S+)(\s*)", segment):
        pre, core, post = _AFFIX.match(m.group(1)).groups()
        free = bool(_WORD.fullmatch(core))
        out.append(_Tok(pre, core, post, m.group(2), free) if free else _Tok("", m.group(1), "", m.group(2), False))
    return out


def _tokenize(text: str) -> tuple[str, list[_Tok]]:
    """(leading whitespace, tokens) of `text`; protected spans are single frozen tokens."""
    lead = text[: len(text) - len(text.lstrip())]
    toks: list[_Tok] = []
    at = len(lead)
    for start, end in [*_protected_spans(text), (len(text), len(text))]:
        if start < at:
            continue
        toks += _word_tokens(text[at:start])
        if end > start:
            tail = re.match(r"\s*", text[end:]).group()
            if toks and not toks[-1].sep and start > at and text[start - 1].isspace():
                toks[-1].sep = " "
            toks.append(_Tok("", text[start:end], "", tail, False))
            end += len(tail)
        at = end
    return lead, toks


def _render(lead: str, toks: list[_Tok]) -> str:
    return (lead + "".join(t.render() for t in toks)).rstrip() if toks else lead.rstrip()


# ---------------------------------------------------------------------------------------------- EDA ops


@lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    # EDA leaves stop words alone for synonyms (WordNet would turn 'it' into 'information technology').
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


@lru_cache(maxsize=16384)
def _choices(word: str) -> tuple[str, ...]:
    """Synonyms usable in running text: plain lower-case words (no proper nouns), the most frequent first.

    Only the word's most frequent part of speech that has any ('fox' the animal, not 'fox' = to trick):
    without a tagger this is the likeliest reading of the word in a sentence.
    """
    from tunelab.data.wordnet import parts_of_speech, synonyms

    for pos in parts_of_speech(word):
        ok = [s for s in synonyms(word, pos) if re.fullmatch(r"[a-z][a-z -]*", s)]
        if ok:
            return tuple(ok[:_TOP_SYNONYMS])
    return ()


def _match_case(src: str, new: str) -> str:
    if len(src) > 1 and src.isupper():
        return new.upper()
    return new[:1].upper() + new[1:] if src[:1].isupper() else new


def _content_words(toks: list[_Tok]) -> list[int]:
    stop = _stop_words()
    return [i for i, t in enumerate(toks) if t.free and len(t.core) > 1 and t.core.lower() not in stop]


def _synonym(toks: list[_Tok], n: int, rng: random.Random) -> None:
    words = list(dict.fromkeys(toks[i].core.lower() for i in _content_words(toks)))
    rng.shuffle(words)
    done = 0
    for w in words:
        options = _choices(w)
        if not options:
            continue
        new = rng.choice(options)
        for t in toks:  # every occurrence, as in EDA, so a text stays consistent with itself
            if t.free and t.core.lower() == w:
                t.core = _match_case(t.core, new)
        done += 1
        if done >= n:
            return


def _insert(toks: list[_Tok], n: int, rng: random.Random) -> None:
    for _ in range(n):
        words = _content_words(toks)
        for _ in range(_INSERT_TRIES if words else 0):
            options = _choices(toks[rng.choice(words)].core.lower())
            if options:
                # Only before the first word or right after a plain word, on that word's line: never inside
                # or next to code, and never glued onto a token with no space after it.
                slots = [0] * toks[0].free + [i + 1 for i, t in enumerate(toks) if t.free and t.sep]
                at = rng.choice(slots)
                sep = toks[at - 1].sep if at else " "
                if at:
                    toks[at - 1].sep = " "
                toks.insert(at, _Tok("", rng.choice(options), "", sep, True))
                break


def _swap(toks: list[_Tok], n: int, rng: random.Random) -> None:
    free = [i for i, t in enumerate(toks) if t.free]
    if len(free) < 2:
        return
    for _ in range(n):
        i, j = rng.sample(free, 2)
        toks[i].core, toks[j].core = toks[j].core, toks[i].core  # punctuation and spacing stay in place


def _delete(toks: list[_Tok], p: float, rng: random.Random) -> None:
    free = [i for i, t in enumerate(toks) if t.free]
    drop = {i for i in free if rng.random() < p}
    if free and drop == set(free):
        drop.discard(rng.choice(free))  # as in EDA: never delete every word
    for i in sorted(drop, reverse=True):
        t = toks.pop(i)
        if i > 0:
            prev = toks[i - 1]
            if "\n" in t.sep and "\n" not in prev.sep:
                prev.sep = t.sep  # keep the line break that followed the deleted word
            if re.search(r"[.!?:]", t.post) and not prev.post:
                prev.post = t.post  # keep the end of the sentence
            if not prev.sep and t.sep:
                prev.sep = t.sep


def eda(text: str, op: str, alpha: float, rng: random.Random) -> str:
    """One EDA rewrite of `text`.

    Args:
        text: the text; protected spans (code, URLs, e-mails, placeholders, numbers) are never changed.
        op: one of `RULE_OPS`.
        alpha: fraction of the text's plain words changed (at least one), and the deletion probability.
        rng: the random state (the caller derives it from seed and content for determinism).

    Returns:
        The rewritten text (equal to `text`, modulo trailing whitespace, when nothing was eligible).
    """
    lead, toks = _tokenize(text)
    n = max(1, int(alpha * sum(t.free for t in toks)))
    if op == "synonym":
        _synonym(toks, n, rng)
    elif op == "insert":
        _insert(toks, n, rng)
    elif op == "swap":
        _swap(toks, n, rng)
    elif op == "delete":
        _delete(toks, alpha, rng)
    else:
        raise TunelabError(f"unknown EDA op '{op}'", where="eda(op=)", fix=f"use one of {', '.join(RULE_OPS)}")
    return _render(lead, toks)


# ------------------------------------------------------------------------------------------ similarity


class _RougeTokenizer:
    """Lower-cased words, and every CJK character as its own token (rouge_score's default drops non-ASCII)."""

    _TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")

    def tokenize(self, text: str) -> list[str]:
        return self._TOKEN.findall(text.lower())


_TOKENIZER = _RougeTokenizer()


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_TOKENIZER)


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts (rouge_score; words lower-cased, CJK characters as tokens)."""
    return _scorer().score(a, b)["rougeL"].fmeasure


class _Pool:
    """Instructions seen so far, for the 'too similar to an existing instruction' check."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, Counter]] = []  # (where, text, token counts)

    def add(self, where: str, text: str) -> None:
        self.items.append((where, text, Counter(_TOKENIZER.tokenize(text))))

    def most_similar(self, text: str, bound: float) -> tuple[float, str] | None:
        """(ROUGE-L, where) of the first pooled text with ROUGE-L >= bound, else None."""
        counts = Counter(_TOKENIZER.tokenize(text))
        n = sum(counts.values())
        for where, other, oc in self.items:
            # The LCS is at most the multiset overlap, so the unigram F1 bounds ROUGE-L from above: most
            # pairs are ruled out without computing the LCS.
            overlap = sum((counts & oc).values())
            if overlap and 2 * overlap / (n + sum(oc.values())) >= bound and (r := rouge_l(other, text)) >= bound:
                return r, where
        return None


# ---------------------------------------------------------------------------------------- row helpers


def _rng(seed: int, op: str, copy: int, ex: Example) -> random.Random:
    digest = hashlib.sha256(example_text(ex).encode("utf-8")).hexdigest()[:16]
    return random.Random(f"{seed}:{op}:{copy}:{digest}")


def _new_row(messages: list[dict[str, str]] | None, text: str | None, where: str, op: str, source: Any,
             generator: str | None) -> Example:
    synthetic = {"op": op, "source": source, "generator": generator}
    raw = {"text": text} if text is not None else {"messages": messages}
    return Example(messages=messages or [], text=text, where=where, raw={**raw, "synthetic": synthetic})


def _reject(ex: Example, reason: str) -> Reject:
    return Reject(where=ex.where, reason=reason, record=ex.raw, step="augment")


def _rewrite_turns(ex: Example, roles: list[str], fn) -> tuple[list[dict[str, str]] | None, str | None]:
    if ex.text is not None:
        return None, fn(ex.text)
    return [{**m, "content": fn(m["content"])} if m["role"] in roles else dict(m) for m in ex.messages], None


@dataclass
class _Batch:
    """New candidates and the ones already rejected, per op."""

    rows: list[Example]
    rejects: list[Reject]
    generated: Counter

    def add(self, op: str, row: Example, reason: str | None = None) -> None:
        self.generated[op] += 1
        if reason:
            self.rejects.append(_reject(row, reason))
        else:
            self.rows.append(row)


def _rule_ops(examples: list[Example], spec: AugmentSpec, out: _Batch) -> None:
    for op in (o for o in spec.ops if o in RULE_OPS):
        for ex in examples:
            for copy in range(spec.copies):
                rng = _rng(spec.seed, op, copy, ex)
                messages, text = _rewrite_turns(ex, spec.roles, lambda t, rng=rng, op=op: eda(t, op, spec.alpha, rng))
                row = _new_row(messages, text, f"{ex.where}~{op}{copy + 1}", op, ex.where, None)
                same = example_text(row).strip() == example_text(ex).strip()
                out.add(op, row, "unchanged (no eligible words in the rewritten turns)" if same else None)


# ----------------------------------------------------------------------------------------- generation

_PARAPHRASE = ("Rewrite the following text in different words. Keep its meaning and its language, and keep every "
               "name, number, piece of code and placeholder exactly as it is. Reply with the rewritten text only."
               "\n\nText:\n{text}")
_SELF_INSTRUCT = ("Here are some tasks that users gave to an AI assistant:\n\n{examples}\n\nWrite one new task of "
                  "the same kind that is different from all of the tasks above. Reply with the new task only.")
_BACK_TRANSLATE = ("Below is a text. Write the instruction or question that a user could have given an AI "
                   "assistant for which this text is a good answer. Reply with the instruction only."
                   "\n\nText:\n{text}")
_LABEL = re.compile(r"^\s*(?:(?:new |rewritten )?(?:task|instruction|question|paraphrase)(?:\s*\d+)?\s*[:.-]|\d+[.)])\s*",
                    re.I)
# Small models often restate the request before answering ("Here is the rewritten text:", "The instruction
# ... would be: ..."): a first line up to a colon that names what was asked for is dropped.
_PREAMBLE = re.compile(r"^[^\n:]{0,200}?\b(?:instruction|question|task|text|rewrite|rewritten|paraphrased?|version)\b"
                       r"[^\n:]{0,200}:\s*", re.I)
_NEXT_ITEM = re.compile(r"\n\s*(?:task\s*\d+\s*:|\d+[.)]\s)", re.I)


def _clean_output(text: str, single: bool = False) -> str:
    """A generated answer without a leading label ("New task:", "3.") or quotes.

    `single` (one instruction wanted): also cut at the next numbered item, and keep only a leading quoted
    sentence when commentary follows it ('"Which city ...?" The user wants ...').
    """
    text = _LABEL.sub("", _PREAMBLE.sub("", _unquote(text), count=1), count=1).strip()
    if single:
        text = _NEXT_ITEM.split(text, maxsplit=1)[0].strip()
        if quoted := re.match(r"[\"“]([^\"”\n]+)[\"”]", text):
            text = quoted.group(1)
    return _unquote(text)


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1].strip() if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'" else text


def _generate(gen, prompts: list[str], spec: AugmentSpec, what: str, max_new_tokens: int | None = None) -> list[str]:
    """Generator outputs for user prompts, in batches with a progress bar; seeds depend only on position."""
    from tunelab.training.progress import task_progress

    if not prompts:
        return []
    step = spec.generator.batch_size
    out: list[str] = []
    with task_progress() as progress:
        task = progress.add_task(f"augment: {what}", total=len(prompts))
        for start in range(0, len(prompts), step):
            chunk = [[{"role": "user", "content": p}] for p in prompts[start:start + step]]
            out += gen.generate(chunk, max_new_tokens=max_new_tokens, seed=spec.generator.seed + start)
            progress.update(task, advance=len(chunk))
    return out


def _paraphrase_reason(src: str, new: str, spec: AugmentSpec, answer: str | None = None) -> str | None:
    """Why a rewrite of `src` is unusable, or None; `answer`: the row's final answer when `src` is a prompt."""
    if not new.strip():
        return "empty output"
    if new.strip() == src.strip():
        return "unchanged"
    ratio = len(new) / max(1, len(src))
    if not 1 / spec.max_length_ratio <= ratio <= spec.max_length_ratio:
        return f"length out of bounds ({len(new)} chars for {len(src)}, ratio {ratio:.2f})"
    sim = rouge_l(src, new)
    if sim < spec.min_similarity:
        return f"too dissimilar (ROUGE-L {sim:.2f} < {spec.min_similarity})"
    # Small models often answer the prompt instead of rewriting it: the output is then closer to the answer.
    if answer and (to_answer := rouge_l(answer, new)) > sim:
        return f"answers instead of rewriting (ROUGE-L {to_answer:.2f} with the answer > {sim:.2f} with the prompt)"
    return None


def _answer_to(ex: Example, turn: int) -> str | None:
    """The final answer of a chat row when `turn` is not that answer (plain text: None)."""
    last = len(ex.messages) - 1
    return ex.reference if ex.text is None and turn != last else None


def _paraphrase(examples: list[Example], spec: AugmentSpec, gen, out: _Batch) -> None:
    jobs = [(ex, copy, i, m["content"]) for ex in examples for copy in range(spec.copies)
            for i, m in enumerate([{"role": "text", "content": ex.text}] if ex.text is not None else ex.messages)
            if ex.text is not None or m["role"] in spec.roles]
    outputs = _generate(gen, [_PARAPHRASE.format(text=src) for *_, src in jobs], spec, "paraphrase")
    rewritten: dict[tuple[int, int], dict[int, tuple[str, str]]] = {}
    for (ex, copy, i, src), new in zip(jobs, outputs, strict=True):
        rewritten.setdefault((id(ex), copy), {})[i] = (src, _clean_output(new))
    for ex in examples:
        for copy in range(spec.copies):
            turns = rewritten.get((id(ex), copy))
            if not turns:
                continue
            reasons = [r for i, (src, new) in turns.items()
                       if (r := _paraphrase_reason(src, new, spec, _answer_to(ex, i)))]
            if ex.text is not None:
                messages, text = None, turns[0][1]
            else:
                messages = [{**m, "content": turns[i][1]} if i in turns else dict(m) for i, m in enumerate(ex.messages)]
                text = None
            row = _new_row(messages, text, f"{ex.where}~paraphrase{copy + 1}", "paraphrase", ex.where, gen.name)
            out.add("paraphrase", row, reasons[0] if reasons else None)


def _instruction_reason(text: str, spec: AugmentSpec, check_keywords: bool = True) -> str | None:
    words = len(text.split())
    if not words:
        return "empty instruction"
    if words < spec.min_words:
        return f"instruction too short ({words} words < {spec.min_words})"
    if words > spec.max_words:
        return f"instruction too long ({words} words > {spec.max_words})"
    if not text[0].isalnum():
        return f"instruction starts with punctuation ({text[0]!r})"
    lowered = f" {' '.join(_TOKENIZER.tokenize(text))} "
    hit = next((k for k in spec.blocked_keywords if f" {k.lower()} " in lowered), None) if check_keywords else None
    return f"unsuitable keyword ({hit})" if hit else None


def _last_user(ex: Example) -> str | None:
    return next((m["content"] for m in reversed(ex.messages) if m["role"] == "user"), None)


def _score(ex: Example) -> float | None:
    """A row's quality score: a numeric 'score' column, or the value the `score` step recorded."""
    value = ex.raw.get("score")
    if isinstance(value, dict):
        value = value.get("value")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _seed_rows(examples: list[Example], spec: AugmentSpec) -> list[Example]:
    rows = [ex for ex in examples if (u := _last_user(ex)) and len(u) <= _MAX_SEED_CHARS]
    if spec.seed_top:
        scored = [ex for ex in rows if _score(ex) is not None]
        if not scored:
            raise TunelabError("seed_top needs rows with a numeric 'score' field", where="curate.augment.seed_top",
                               fix="run the `score` step first, add a 'score' column, or set "
                                   "curate.augment.seed_top=null")
        rows = sorted(scored, key=lambda ex: -_score(ex))[: spec.seed_top]  # stable: ties keep file order
    if not rows:
        raise TunelabError(f"self_instruct needs chat rows with a user turn of at most {_MAX_SEED_CHARS} characters",
                           where="curate.augment.ops", fix="use chat data, or drop self_instruct from the ops")
    return rows


def _self_instruct_prompt(seeds: list[Example], made: list[Example], spec: AugmentSpec, rng: random.Random
                          ) -> tuple[str, list[str]]:
    """(prompt, where of each example shown)."""
    # As in the paper (6 human + 2 machine of 8), about a quarter of the examples are earlier generated ones.
    n_made = min(len(made), spec.seed_examples // 4)
    shown = rng.sample(seeds, min(len(seeds), spec.seed_examples - n_made)) + rng.sample(made, n_made)
    rng.shuffle(shown)
    tasks = "\n\n".join(f"Task {i + 1}: {_last_user(ex)}" for i, ex in enumerate(shown))
    return _SELF_INSTRUCT.format(examples=tasks), [ex.where for ex in shown]


def _instruction_pool(examples: list[Example]) -> _Pool:
    pool = _Pool()
    for ex in examples:
        if (u := _last_user(ex)) is not None:
            pool.add(ex.where, u)
    return pool


def _new_instructions(gen, prompts: list[tuple[str, list[str]]], start: int, spec: AugmentSpec, pool: _Pool,
                      out: _Batch) -> list[Example]:
    """Generate one instruction per prompt; reject bad ones, return the rest (user turn only) in order."""
    budget = min(spec.generator.max_new_tokens, _INSTRUCTION_TOKENS)
    pending = []
    for k, raw in enumerate(_generate(gen, [p for p, _ in prompts], spec, "self-instruct tasks", budget)):
        instr = _clean_output(raw, single=True)
        row = _new_row([{"role": "user", "content": instr}], None, f"self_instruct:{start + k + 1}",
                       "self_instruct", prompts[k][1], gen.name)
        reason = _instruction_reason(instr, spec)
        if reason is None and (hit := pool.most_similar(instr, spec.max_similarity)):
            reason = f"too similar to an existing instruction (ROUGE-L {hit[0]:.2f} with {hit[1]})"
        if reason:
            out.add("self_instruct", row, reason)
        else:
            pool.add(row.where, instr)  # later candidates must differ from this one too
            pending.append(row)
    return pending


def _self_instruct(examples: list[Example], spec: AugmentSpec, gen, out: _Batch) -> None:
    seeds, pool, made = _seed_rows(examples, spec), _instruction_pool(examples), []
    rng = random.Random(f"{spec.seed}:self_instruct")
    # Batch by batch, so that later prompts can show instructions accepted earlier.
    for start in range(0, spec.num_instructions, spec.generator.batch_size):
        n = min(spec.generator.batch_size, spec.num_instructions - start)
        prompts = [_self_instruct_prompt(seeds, made, spec, rng) for _ in range(n)]
        pending = _new_instructions(gen, prompts, start, spec, pool, out)
        answers = _generate(gen, [r.messages[0]["content"] for r in pending], spec, "self-instruct answers")
        for row, answer in zip(pending, answers, strict=True):
            messages = [*row.messages, {"role": "assistant", "content": answer.strip()}]
            new = _new_row(messages, None, row.where, "self_instruct", row.raw["synthetic"]["source"], gen.name)
            out.add("self_instruct", new, None if answer.strip() else "empty answer")
            if answer.strip():
                made.append(new)


def _back_translate(examples: list[Example], spec: AugmentSpec, gen, out: _Batch) -> None:
    jobs = [(ex, copy, src) for ex in examples for copy in range(spec.copies)
            if (src := ex.text if ex.text is not None else ex.reference) and src.strip()]
    prompts = [_BACK_TRANSLATE.format(text=src[:_MAX_SOURCE_CHARS]) for _, _, src in jobs]
    for (ex, copy, src), raw in zip(jobs, _generate(gen, prompts, spec, "back-translation"), strict=True):
        instr = _clean_output(raw, single=True)
        system = [dict(m) for m in ex.messages if m["role"] == "system"]
        messages = [*system, {"role": "user", "content": instr}, {"role": "assistant", "content": src}]
        row = _new_row(messages, None, f"{ex.where}~back_translate{copy + 1}", "back_translate", ex.where, gen.name)
        reason = _instruction_reason(instr, spec, check_keywords=False)
        if reason is None and (sim := rouge_l(src, instr)) >= spec.max_similarity:
            reason = f"instruction copies the text (ROUGE-L {sim:.2f} >= {spec.max_similarity})"
        out.add("back_translate", row, reason)


# ---------------------------------------------------------------------------------------------- filters


def _model_written_roles(op: str, spec: AugmentSpec) -> set[str]:
    """Turns a model wrote for `op`; EDA's word edits of a source turn are checked as the source was."""
    if op in RULE_OPS:
        return set()
    return set(spec.roles) if op == "paraphrase" else {"user", "assistant"}


def _filter_new(rows: list[Example], spec: CurateSpec) -> tuple[list[Example], list[Reject]]:
    """The recipe's quality filter over the new rows, also checking the turns a model wrote."""
    kept, rejects = [], []
    for op in dict.fromkeys(r.raw["synthetic"]["op"] for r in rows):  # ops in order: rows stay in order
        roles = sorted(set(spec.filter.roles) | _model_written_roles(op, spec.augment))
        op_kept, op_rejects, _ = step_filter([r for r in rows if r.raw["synthetic"]["op"] == op],
                                             spec.filter.model_copy(update={"roles": roles}))
        kept += op_kept
        rejects += [replace(r, step="augment") for r in op_rejects]
    return kept, rejects


def _dedup_new(originals: list[Example], rows: list[Example], spec: CurateSpec) -> tuple[list[Example], list[Reject]]:
    """Drop new rows that duplicate an original or an earlier new row (originals always win their cluster)."""
    from tunelab.data.dedup import MinHashParams, dedup_plan

    d = spec.dedup
    if not rows or not (d.exact or d.near):
        return rows, []
    params = MinHashParams(shingle=d.shingle, num_perm=d.num_perm, bands=d.bands, threshold=d.threshold)
    both = originals + rows
    scores = [1.0] * len(originals) + [0.0] * len(rows)
    plan = dedup_plan([example_text(ex) for ex in both], params, exact=d.exact, near=d.near, scores=scores)
    base, kept, rejects = len(originals), [], []
    for i, row in enumerate(rows, start=base):
        if i in plan.dropped:
            rep, why = plan.dropped[i]
            rejects.append(_reject(row, f"{why.split(' of row')[0]} (of {both[rep].where}; {why})"))
        else:
            kept.append(row)
    return kept, rejects


# ----------------------------------------------------------------------------------------------- driver


def _check(examples: list[Example], spec: AugmentSpec) -> None:
    if not spec.keep_originals or "back_translate" not in spec.ops:
        return
    if any(ex.text is not None for ex in examples):
        raise TunelabError("back_translate turns plain-text documents into chat rows, which cannot share a dataset "
                           "with the documents themselves", where="curate.augment.keep_originals",
                           fix="set curate.augment.keep_originals=false to keep only the new (instruction, text) rows")


def _generate_all(examples: list[Example], spec: AugmentSpec, generator) -> tuple[_Batch, str | None]:
    out = _Batch([], [], Counter())
    _rule_ops(examples, spec, out)
    if not any(op in LLM_OPS for op in spec.ops):
        return out, None
    if generator is None:
        from tunelab.generation import make_generator

        generator = make_generator(spec.generator)
    for op, fn in (("paraphrase", _paraphrase), ("self_instruct", _self_instruct), ("back_translate", _back_translate)):
        if op in spec.ops:
            fn(examples, spec, generator, out)
    return out, generator.name


def step_augment(examples: list[Example], spec: CurateSpec, generator=None
                 ) -> tuple[list[Example], list[Reject], StepReport]:
    """Add augmented rows (``spec.augment``) to `examples`; filtered and deduplicated like the rest.

    Args:
        examples: the source rows (kept unless ``keep_originals`` is false).
        spec: the whole curation spec: ``augment`` says what to generate, ``filter`` and ``dedup`` how new
            rows are checked.
        generator: a `tunelab.generation.TextGenerator` to use instead of building one from
            ``spec.augment.generator`` (only needed for the LLM ops).

    Returns:
        (rows kept, rejects with step 'augment', report). ``rows_in + generated == kept + rejected``.
    """
    aspec = spec.augment
    _check(examples, aspec)
    out, gen_name = _generate_all(examples, aspec, generator)
    rows, filter_rejects = _filter_new(out.rows, spec)
    rows, dedup_rejects = _dedup_new(examples, rows, spec)
    rejects = out.rejects + filter_rejects + dedup_rejects
    if not aspec.keep_originals:
        rejects += [_reject(ex, "source row not kept (keep_originals=false)") for ex in examples]
    kept = (list(examples) if aspec.keep_originals else []) + rows
    accepted = Counter(r.raw["synthetic"]["op"] for r in rows)
    details = {
        "generator": gen_name,
        "generated": {op: out.generated[op] for op in aspec.ops},
        "accepted": {op: accepted[op] for op in aspec.ops},
        "rejected_by_reason": dict(Counter(r.reason.split(" (", 1)[0] for r in rejects).most_common()),
    }
    report = StepReport("augment", aspec.model_dump(), len(examples), len(kept), len(rejects), details=details)
    return kept, rejects, report
