"""Bias probes: counterfactual pairs from the evaluation inputs, and fill-in templates.

Two probes, each run on the base and the tuned model:

* **Counterfactual inputs.** Every evaluation prompt that mentions a demographic term (he/she, a gendered
  name, a nationality, a religion, an age word ...) is copied with the terms of one attribute swapped
  (`Swapper`: word boundaries, case kept, "a"/"an" fixed, her/his resolved by the next word). The model
  answers both sides; per attribute the report gives how often the answer changes beyond the swap itself,
  how often a predicted label flips, the mean difference of the task score between the sides, and the
  mean |Δ log-prob| of the reference answer (swapped too, except for labels).
* **Templates.** "The {person} worked as" is filled with each term of a group (man / woman, ...) and the
  log-probability of each continuation (" a nurse", " an engineer", ...) is read. For every pair of terms:
  the mean |Δ| of the continuations' log-probabilities, normalised over the template's continuations (so
  an overall shift does not count, only a change of preference), and whether the most likely continuation
  differs (top flip).

The probe set is ``evaluation/data/bias_probes.yaml`` plus an optional user file in the same format
(`load_probe_set`). Numbers are means over pairs with 95% percentile-bootstrap intervals.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import TunelabError

__all__ = [
    "BUILTIN_PROBES",
    "CounterfactualPair",
    "ProbeSet",
    "Swapper",
    "Template",
    "input_pair_metrics",
    "load_probe_set",
    "make_pairs",
    "run_bias",
    "template_logprobs",
    "template_metrics",
]

BUILTIN_PROBES = Path(__file__).parent / "data" / "bias_probes.yaml"
_WHERE = "eval.bias.templates_file"
_KEYS = ("swaps", "groups", "templates")
_TERM = re.compile(r"^[A-Za-z][A-Za-z'.-]*(?: [A-Za-z][A-Za-z'.-]*)*$")
# The possessive forms of the one ambiguous pair the swapper resolves: her -> his|him, his -> her|hers.
_DETERMINERS = frozenset({"his", "her"})
# A pronoun followed by one of these (or by punctuation, or nothing) is an object/independent pronoun
# ("gave her the book", "told her that", "is his."), not a possessive before a noun ("her book").
_FUNCTION_TEXT = """
a an the to for with at in on by from of about into onto over under after before through as like than
up down out off away back around along across behind near without during and or but nor so yet because
if that when while since until though although whether i you he she it we they me him her us them this
these those what who which there here is was are were be been am has have had do does did will would can
could should may might must shall too very again now then just also not never always yesterday today
tomorrow tonight soon later already still much more most well either anyway
"""
_FUNCTION_WORDS = frozenset(_FUNCTION_TEXT.split())
_NEXT_WORD = re.compile(r"\s*([A-Za-z]+)")
# Words that start with a vowel letter but a consonant sound take "a" ("a European", "a unique").
_CONSONANT_SOUND = ("eu", "uni", "use", "usu", "one", "once")


# ------------------------------------------------------------------------------------------- probe set


@dataclass(frozen=True)
class Template:
    """A text with ``{person}`` and the continuations compared across the terms of a group."""

    text: str
    continuations: tuple[str, ...]
    where: str = "builtin"


@dataclass
class ProbeSet:
    """Swap pairs and template groups per attribute, and the templates."""

    swaps: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    templates: list[Template] = field(default_factory=list)

    @property
    def attributes(self) -> list[str]:
        return sorted(set(self.swaps) | set(self.groups))


def _fail(what: str, where: str, fix: str | None = None) -> TunelabError:
    return TunelabError(what, where=where, fix=fix or "see docs/evaluation.md, 'Bias probes', for the file format")


def _check_term(term: Any, where: str) -> str:
    if not isinstance(term, str) or not _TERM.match(term):
        raise _fail(f"{term!r} is not a term (letters, with inner spaces, hyphens, apostrophes or dots)", where)
    return term


def _parse_swaps(raw: Any, where: str) -> dict[str, list[tuple[str, str]]]:
    if not isinstance(raw, dict):
        raise _fail("'swaps' must map attribute names to lists of [word, counterpart] pairs", where)
    out: dict[str, list[tuple[str, str]]] = {}
    for attr, pairs in raw.items():
        at = f"{where}: swaps.{attr}"
        if not isinstance(pairs, list) or not pairs:
            raise _fail("must be a non-empty list of [word, counterpart] pairs", at)
        out[str(attr)] = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise _fail(f"pair {i + 1} must be a list of two words, got {pair!r}", at)
            a, b = (_check_term(t, f"{at}[{i}]") for t in pair)
            if a.lower() == b.lower():
                raise _fail(f"pair {i + 1} swaps '{a}' with itself", at)
            out[str(attr)].append((a, b))
        Swapper(out[str(attr)], where=at)  # an ambiguous word fails here, at load time
    return out


def _parse_groups(raw: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        raise _fail("'groups' must map attribute names to lists of terms", where)
    out: dict[str, list[str]] = {}
    for attr, terms in raw.items():
        at = f"{where}: groups.{attr}"
        if not isinstance(terms, list) or len(terms) < 2:
            raise _fail("needs a list of at least two terms to compare", at)
        terms = [_check_term(t, at) for t in terms]
        if len({t.lower() for t in terms}) != len(terms):
            raise _fail("lists a term twice", at)
        out[str(attr)] = terms
    return out


def _parse_template(raw: Any, where: str) -> Template:
    if not isinstance(raw, dict) or set(raw) - {"text", "continuations"}:
        raise _fail("a template is {text: '... {person} ...', continuations: [...]} (no other keys)", where)
    text, conts = raw.get("text"), raw.get("continuations")
    if not isinstance(text, str) or text.count("{person}") != 1 or re.search(r"\{(?!person\})", text):
        raise _fail(f"text must contain '{{person}}' exactly once and no other braces, got {text!r}", where)
    if not isinstance(conts, list) or len(conts) < 2 or not all(isinstance(c, str) and c.strip() for c in conts):
        raise _fail("continuations must be a list of at least two non-empty strings", where)
    if len(set(conts)) != len(conts):
        raise _fail("lists a continuation twice", where)
    return Template(text, tuple(conts), where)


def _parse(doc: Any, where: str) -> ProbeSet:
    if not isinstance(doc, dict):
        raise _fail("a probe file is a mapping with keys swaps, groups and templates", where)
    unknown = sorted(set(doc) - set(_KEYS))
    if unknown:
        raise _fail(f"unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(_KEYS)}", where)
    templates = doc.get("templates") or []
    if not isinstance(templates, list):
        raise _fail("'templates' must be a list", where)
    return ProbeSet(
        swaps=_parse_swaps(doc["swaps"], where) if doc.get("swaps") is not None else {},
        groups=_parse_groups(doc["groups"], where) if doc.get("groups") is not None else {},
        templates=[_parse_template(t, f"{where}: templates[{i}]") for i, t in enumerate(templates)],
    )


def _read(path: Path) -> Any:
    if not path.is_file():
        raise _fail(f"bias probe file not found: {path}", _WHERE, "give the path of a YAML or JSON probe file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(f"cannot read the bias probe file: {e}", str(path)) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise _fail(f"invalid YAML: {getattr(e, 'problem', e)}", f"{path}:{mark.line + 1}" if mark else str(path)) from e


def load_probe_set(user_file: str | Path | None = None, builtin: bool = True) -> ProbeSet:
    """The built-in probe set, extended by a user file.

    The user file's ``swaps`` and ``groups`` replace built-in attributes of the same name and add new
    ones; its ``templates`` are added to the built-in templates.

    Args:
        user_file: a YAML/JSON file in the format of ``evaluation/data/bias_probes.yaml``, or None.
        builtin: start from the built-in set (False: the user file alone).

    Raises:
        TunelabError: the file is missing, unreadable, or breaks the format (the message names the key).
    """
    base = _parse(yaml.safe_load(BUILTIN_PROBES.read_text(encoding="utf-8")), "builtin") if builtin else ProbeSet()
    if user_file is None:
        return base
    path = Path(user_file).expanduser()
    extra = _parse(_read(path), str(path))
    return ProbeSet(swaps={**base.swaps, **extra.swaps}, groups={**base.groups, **extra.groups},
                    templates=base.templates + extra.templates)


# -------------------------------------------------------------------------------------------- swapping


def _match_case(source: str, word: str) -> str:
    if len(source) > 1 and source.isupper():
        return word.upper()
    if source[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _article(article: str, word: str) -> str:
    low = word.lower()
    vowel = low[:1] in "aeiou" and not low.startswith(_CONSONANT_SOUND)
    new = "an" if vowel else "a"
    return _match_case(article, new) if article.lower() in ("a", "an") else article


class Swapper:
    """Swaps the words of one attribute in a text, both ways at once (he <-> she), case-preserving.

    Args:
        pairs: ``(word, counterpart)`` pairs; matching ignores case, multi-word terms match any whitespace.
        where: where the pairs come from, for errors.

    Raises:
        TunelabError: a word has two counterparts (other than the her/his pair, which is resolved by
            whether a noun follows).
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], where: str = "swaps"):
        table: dict[str, list[str]] = {}
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                cands = table.setdefault(x.lower(), [])
                if y.lower() not in (c.lower() for c in cands):
                    cands.append(y)
        self._table: dict[str, str | tuple[str, str]] = {}
        for key, cands in table.items():
            self._table[key] = cands[0] if len(cands) == 1 else self._resolvable(key, cands, where)
        words = sorted(table, key=len, reverse=True)  # longest first: "young man" before "man"
        alt = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
        self._pattern = re.compile(rf"(?:\b(?P<art>an?)(?P<gap>\s+))?(?<!\w)(?P<word>{alt})(?!\w)", re.IGNORECASE)

    @staticmethod
    def _resolvable(key: str, cands: list[str], where: str) -> tuple[str, str]:
        dets = [c for c in cands if c.lower() in _DETERMINERS]
        if len(cands) != 2 or len(dets) != 1:
            raise TunelabError(f"'{key}' would swap to {' or '.join(repr(c) for c in cands)}", where=where,
                               fix="give every word one counterpart (only her/his are resolved by context)")
        pron = next(c for c in cands if c is not dets[0])
        return dets[0], pron  # (before a noun, elsewhere)

    def _replacement(self, m: re.Match) -> str:
        source = m.group("word")
        target = self._table[" ".join(source.lower().split())]
        if isinstance(target, tuple):
            nxt = _NEXT_WORD.match(m.string, m.end())
            target = target[0] if nxt and nxt.group(1).lower() not in _FUNCTION_WORDS else target[1]
        new = _match_case(source, target)
        art = m.group("art")
        return f"{_article(art, new)}{m.group('gap')}{new}" if art else new

    def swap(self, text: str) -> tuple[str, int]:
        """``(swapped text, number of words swapped)``."""
        return self._pattern.subn(self._replacement, text)

    def __call__(self, text: str) -> str:
        return self.swap(text)[0]


# ----------------------------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class CounterfactualPair:
    """One evaluation row and its copy with one attribute's terms swapped."""

    attribute: str
    index: int
    where: str
    prompt: list[dict[str, str]]
    cf_prompt: list[dict[str, str]]
    reference: str
    cf_reference: str
    n_swapped: int


def make_pairs(examples: Sequence[Any], swappers: dict[str, Swapper], swap_reference: bool,
               max_pairs: int | None = None) -> dict[str, list[CounterfactualPair]]:
    """Counterfactual pairs per attribute: the rows whose prompt mentions a term of that attribute.

    Args:
        examples: evaluation rows (`tunelab.data.records.Example`: ``prompt_messages``, ``reference``).
        swappers: one `Swapper` per attribute.
        swap_reference: also swap the reference answer (free text); labels stay as they are.
        max_pairs: at most this many pairs per attribute (the first rows, in split order).
    """
    out: dict[str, list[CounterfactualPair]] = {}
    for attr, swapper in swappers.items():
        pairs: list[CounterfactualPair] = []
        for i, ex in enumerate(examples):
            if max_pairs is not None and len(pairs) >= max_pairs:
                break
            swapped = [swapper.swap(m["content"]) for m in ex.prompt_messages]
            n = sum(k for _, k in swapped)
            if n == 0 or ex.reference is None:
                continue
            cf_prompt = [{**m, "content": s} for m, (s, _) in zip(ex.prompt_messages, swapped, strict=True)]
            ref = ex.reference
            pairs.append(CounterfactualPair(attr, i, ex.where, ex.prompt_messages, cf_prompt, ref,
                                            swapper(ref) if swap_reference else ref, n))
        out[attr] = pairs
    return out


# --------------------------------------------------------------------------------------------- metrics


def _ci(values: Sequence[float], seed: int = 0) -> list[float]:
    from tunelab.evaluation.metrics import bootstrap_ci

    return [round(x, 5) for x in bootstrap_ci(values, seed=seed)]


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 5) if values else 0.0


def _stat(out: dict[str, Any], name: str, values: Sequence[float]) -> None:
    out[name] = _mean(values)
    out[f"{name}_ci"] = _ci(values)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def input_pair_metrics(rows: Sequence[dict[str, Any]], task: str, swapper: Swapper,
                       labels: Sequence[str] | None) -> dict[str, Any]:
    """Per-attribute numbers for one model from its scored pairs.

    Args:
        rows: per pair ``{"out", "cf_out", "score", "cf_score", "lp", "cf_lp"}`` (lp may be None).
        task: the evaluation task (label tasks also get the label flip rate).
        swapper: the attribute's swapper (an answer counts as changed when swapping the original answer
            does not give the counterfactual answer).
        labels: the label set (label tasks).
    """
    from tunelab.evaluation.metrics import map_to_label

    out: dict[str, Any] = {"n_pairs": len(rows)}
    if not rows:
        return out
    _stat(out, "output_change_rate", [float(_norm(swapper(r["out"])) != _norm(r["cf_out"])) for r in rows])
    if task == "label" and labels:
        _stat(out, "label_flip_rate", [float(map_to_label(r["out"], labels) != map_to_label(r["cf_out"], labels))
                                       for r in rows])
    out["score"], out["cf_score"] = _mean([r["score"] for r in rows]), _mean([r["cf_score"] for r in rows])
    diffs = [r["cf_score"] - r["score"] for r in rows]
    _stat(out, "mean_score_diff", diffs)
    _stat(out, "mean_abs_score_diff", [abs(d) for d in diffs])
    lps = [r["cf_lp"] - r["lp"] for r in rows if r.get("lp") is not None and r.get("cf_lp") is not None]
    if lps:
        _stat(out, "mean_abs_dlogprob", [abs(d) for d in lps])
        out["mean_dlogprob"] = _mean(lps)
    return out


def _log_softmax(values: Sequence[float]) -> list[float]:
    import math

    top = max(values)
    total = math.log(sum(math.exp(v - top) for v in values)) + top
    return [v - total for v in values]


def template_metrics(logprobs: dict[tuple[int, str], list[float]], templates: Sequence[Template],
                     terms: Sequence[str]) -> dict[str, Any]:
    """Numbers for one model and one group from continuation log-probabilities.

    Args:
        logprobs: ``(template index, term) -> log-prob of each continuation`` (in the template's order).
        templates: the templates.
        terms: the group's terms; every unordered pair is compared on every template.

    Returns:
        ``{"n_pairs", "mean_abs_dlogprob", "mean_abs_dlogprob_ci", "top_flip_rate", "top_flip_rate_ci",
        "most_skewed"}``: log-probabilities are normalised over each template's continuations; one unit is
        a (template, pair of terms); ``most_skewed`` names the continuation whose normalised log-prob
        spreads most across the terms.
    """
    diffs, flips = [], []
    norm = {k: _log_softmax(v) for k, v in logprobs.items()}
    for t, _ in enumerate(templates):
        for a, b in itertools.combinations(terms, 2):
            la, lb = norm[(t, a)], norm[(t, b)]
            diffs.append(sum(abs(x - y) for x, y in zip(la, lb, strict=True)) / len(la))
            flips.append(float(max(range(len(la)), key=la.__getitem__) != max(range(len(lb)), key=lb.__getitem__)))
    out: dict[str, Any] = {"n_pairs": len(diffs)}
    _stat(out, "mean_abs_dlogprob", diffs)
    _stat(out, "top_flip_rate", flips)
    out["most_skewed"] = _most_skewed(norm, templates, terms)
    return out


def _most_skewed(norm: dict[tuple[int, str], list[float]], templates: Sequence[Template],
                 terms: Sequence[str]) -> dict[str, Any]:
    best: dict[str, Any] = {}
    for t, tpl in enumerate(templates):
        for c, cont in enumerate(tpl.continuations):
            by_term = {term: norm[(t, term)][c] for term in terms}
            hi, lo = max(by_term, key=by_term.get), min(by_term, key=by_term.get)
            spread = by_term[hi] - by_term[lo]
            if spread > best.get("spread", -1.0):
                best = {"template": tpl.text, "continuation": cont, "highest": hi, "lowest": lo,
                        "spread": round(spread, 4)}
    return best


# ---------------------------------------------------------------------------------------------- models


def template_logprobs(model, tokenizer, templates: Sequence[Template], terms: Sequence[str], batch_size: int,
                      device: str) -> dict[tuple[int, str], list[float]]:
    """``(template index, term) -> summed log-prob of each continuation`` after the filled-in template."""
    from tunelab.evaluation.scoring import continuation_logprobs

    keys, contexts, conts = [], [], []
    for t, tpl in enumerate(templates):
        for term in terms:
            for cont in tpl.continuations:
                keys.append((t, term))
                contexts.append(tpl.text.replace("{person}", term))
                conts.append(cont)
    scores = continuation_logprobs(model, tokenizer, contexts, conts, batch_size, device)
    out: dict[tuple[int, str], list[float]] = {}
    for key, (lp, _) in zip(keys, scores, strict=True):
        out.setdefault(key, []).append(lp)
    return out


def _task_score(task: str, pred: str, ref: str, labels: Sequence[str] | None) -> float:
    """The task's headline score of one answer (label: correct or not; json: field accuracy; text: ROUGE-L)."""
    from tunelab.evaluation.metrics import INVALID_LABEL, json_metrics, map_to_label, rouge_scores

    if task == "label":
        gold = map_to_label(ref, labels or [ref])
        return float(gold != INVALID_LABEL and map_to_label(pred, labels or [ref]) == gold)
    if task == "json":
        return float(json_metrics([pred], [ref])["field_accuracy"])
    return float(rouge_scores([pred], [ref])["rougeL"])


def _score_pairs(model, tokenizer, pairs: list[CounterfactualPair], task: str, labels, spec, device: str,
                 label: str) -> list[dict[str, Any]]:
    """Generate and score both sides of every pair (both sides in one batched call)."""
    from tunelab.evaluation.generate import generate_answers
    from tunelab.evaluation.scoring import score_options

    prompts = [p.prompt for p in pairs] + [p.cf_prompt for p in pairs]
    refs = [p.reference for p in pairs] + [p.cf_reference for p in pairs]
    outs = generate_answers(model, tokenizer, prompts, spec.max_new_tokens, spec.batch_size, device,
                            label=f"bias pairs ({label})")
    lps = [row[0] for row in score_options(model, tokenizer, prompts, [[r] for r in refs], spec.batch_size, device)]
    n = len(pairs)
    return [{"out": outs[i], "cf_out": outs[n + i], "lp": lps[i], "cf_lp": lps[n + i],
             "score": _task_score(task, outs[i], refs[i], labels),
             "cf_score": _task_score(task, outs[n + i], refs[n + i], labels)} for i in range(n)]


def _probe_model(model, tokenizer, probes: ProbeSet, pairs, swappers, task, labels, spec, device,
                 label: str) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    inputs, rows = {}, {}
    for attr, attr_pairs in pairs.items():
        rows[attr] = _score_pairs(model, tokenizer, attr_pairs, task, labels, spec, device, label) if attr_pairs else []
        inputs[attr] = input_pair_metrics(rows[attr], task, swappers[attr], labels)
    templates = {}
    if probes.templates:
        for attr, terms in probes.groups.items():
            lp = template_logprobs(model, tokenizer, probes.templates, terms, spec.batch_size, device)
            templates[attr] = template_metrics(lp, probes.templates, terms)
    return {"inputs": inputs, "templates": templates}, rows


def _select(probes: ProbeSet, attributes: Sequence[str] | None) -> ProbeSet:
    if attributes is None:
        return probes
    unknown = [a for a in attributes if a not in probes.attributes]
    if unknown:
        raise TunelabError(f"unknown bias attribute(s) {', '.join(map(repr, unknown))}; valid: "
                           f"{', '.join(probes.attributes)}", where="eval.bias.attributes")
    keep = set(attributes)
    return ProbeSet({k: v for k, v in probes.swaps.items() if k in keep},
                    {k: v for k, v in probes.groups.items() if k in keep}, probes.templates)


def _combine(per_model: dict[str, dict[str, Any]], probes: ProbeSet, pairs) -> dict[str, Any]:
    out: dict[str, Any] = {"inputs": {}, "templates": {}}
    for part in ("inputs", "templates"):
        attrs = sorted({a for m in per_model.values() for a in m[part]})
        for attr in attrs:
            out[part][attr] = {name: m[part].get(attr) for name, m in per_model.items()}
    out["n_templates"] = len(probes.templates)
    out["pairs_found"] = {attr: len(p) for attr, p in pairs.items()}
    return out


def _write_rows(path: Path, pairs, rows_by_model: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    from tunelab.util.io import atomic_write_text

    lines = []
    for attr, attr_pairs in pairs.items():
        for i, p in enumerate(attr_pairs):
            row = {"attribute": attr, "where": p.where, "input": p.prompt[-1]["content"],
                   "cf_input": p.cf_prompt[-1]["content"], "reference": p.reference, "cf_reference": p.cf_reference,
                   "n_swapped": p.n_swapped}
            for name, rows in rows_by_model.items():
                row[name] = rows[attr][i]
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))


def run_bias(run_dir: str | Path, recipe, tuned, tokenizer, examples: Sequence[Any], task: str, device: str,
             dtype=None) -> dict[str, Any]:
    """The ``bias`` part of ``eval/metrics.json``; per-pair rows go to ``eval/bias.jsonl``.

    Args:
        run_dir: the run folder.
        recipe: the resolved recipe (``eval.bias`` settings; ``model.name`` is the base model).
        tuned: the tuned model, loaded; the base model is loaded here when ``eval.compare_base`` is on.
        tokenizer: the run's tokenizer.
        examples: the evaluation rows.
        task: the evaluation task (json, label or text generate answers; other tasks get templates only).
        device: where the models run.
        dtype: torch dtype for the base model.

    Returns:
        ``{"inputs": {attr: {"base": METRICS, "tuned": METRICS}}, "templates": {attr: {...}},
        "pairs_found": {attr: n}, "n_templates": n}``.
    """
    from tunelab.models import load_causal_lm

    spec = recipe.eval.bias
    probes = _select(load_probe_set(spec.templates_file, spec.builtin), spec.attributes)
    swappers = {a: Swapper(p, where=f"bias swaps.{a}") for a, p in probes.swaps.items()}
    generative = task in ("json", "label", "text")
    labels = recipe.eval.labels or (sorted({ex.reference for ex in examples if ex.reference}) if task == "label"
                                    else None)
    pairs = make_pairs(examples, swappers, swap_reference=task != "label",
                       max_pairs=spec.max_samples) if generative and spec.inputs else {}
    if not spec.templates:
        probes = ProbeSet(probes.swaps, probes.groups, [])
    per_model, rows = {}, {}
    if recipe.eval.compare_base:
        base = load_causal_lm(recipe.model.name, recipe.model.trust_remote_code, dtype).to(device)
        per_model["base"], rows["base"] = _probe_model(base, tokenizer, probes, pairs, swappers, task, labels,
                                                       recipe.eval, device, "base")
        del base
    per_model["tuned"], rows["tuned"] = _probe_model(tuned, tokenizer, probes, pairs, swappers, task, labels,
                                                     recipe.eval, device, "tuned")
    out_dir = Path(run_dir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_rows(out_dir / "bias.jsonl", pairs, rows)
    return _combine(per_model, probes, pairs)
