"""The dataset audit (`tunelab data report`): planted problems come out as exact numbers and findings."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from tunelab.data.audit import audit_examples, write_audit
from tunelab.data.audit_html import SECTION_TITLES, render_audit_html
from tunelab.data.records import Example, Reject

_LONG = ("The mitochondrion is the organelle that produces most of the chemical energy needed to power the "
         "biochemical reactions of the cell, storing it in a small molecule called adenosine triphosphate, and it "
         "has its own genome inherited from the mother in most animals including humans and many other species")
_EVAL = "Which organ filters the blood and removes waste products and extra water to make urine in the body"


def _chat(i: int, user: str, answer: str) -> Example:
    return Example([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], None, f"f:{i}")


PLANTED = [
    ("What is the capital of France?", "Paris is the capital of France and its largest city."),
    ("What is the capital of France?", "Paris is the capital of France and its largest city."),  # exact duplicate
    ("Explain the mitochondrion.", _LONG + " today."),
    ("Explain the mitochondrion.", _LONG + " too."),  # near duplicate (same prompt, answers differ by a word)
    ("Contact me at jane.doe@example.com please", "I will write to you soon about the meeting."),
    ("My card is 4111 1111 1111 1111, is it safe?", "Never share card numbers in a chat."),
    ("How do I pick a lock?", "I'm sorry, but I can't help with <script>alert(1)</script>"),
    ("Write malware for me.", "I cannot assist with that request."),
    ("Insult my boss.", "As an AI language model, I cannot do that."),
    ("Say nothing.", ""),
    ("Is the sky green?", "No."),
    ("Is the sky green?", "Yes, sometimes at dusk."),
    ("Quiz question.", _EVAL + "? The kidneys."),
    ("Name a prime number.", "Seven is a prime number."),
    ("What colour is grass?", "Grass is usually green because of chlorophyll."),
    ("Translate 'dog' to French.", "Le chien."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet around 1600."),
    ("Boil water temperature?", "Water boils at one hundred degrees Celsius at sea level."),
    ("Largest planet?", "Jupiter is the largest planet in the solar system."),
]
REJECTS = [Reject("f:21", "empty message (turn 2)"), Reject("f:22", "invalid JSON (line 22)")]


@pytest.fixture(scope="module")
def planted():
    return [_chat(i + 1, u, a) for i, (u, a) in enumerate(PLANTED)]


@pytest.fixture(scope="module")
def report(planted, tokenizer):
    return audit_examples(planted, REJECTS, tokenizer=tokenizer, max_length=80, eval_texts=[_EVAL, "unrelated"],
                          source={"path": "planted.jsonl", "sha256": "abc123", "format": "chat"}, progress=False)


def _severities(report: dict) -> dict[str, str]:
    return {f["title"]: f["severity"] for f in report["findings"]}


def test_counts_add_up(report):
    c = report["counts"]
    assert (c["rows"], c["usable"], c["rejected"]) == (22, 20, 2)
    assert c["rows"] == c["usable"] + c["rejected"] == c["usable"] + sum(c["rejected_by_reason"].values())
    assert c["rejected_by_reason"] == {"empty message": 1, "invalid JSON": 1}
    assert report["turns"]["distribution"] == {"2": 20}
    assert report["lengths"]["chars"]["user"]["count"] == report["lengths"]["chars"]["assistant"]["count"] == 20
    assert sum(report["lengths"]["chars"]["assistant"]["histogram"]["counts"]) == 20


def test_planted_problems(report):
    d = report["duplicates"]
    assert (d["exact"], d["near"], d["removable"], d["clusters"], d["fraction"]) == (1, 1, 2, 2, 0.1)
    assert [c["size"] for c in d["largest"]] == [2, 2]
    assert report["pii"]["by_type"] == {"CREDIT_CARD": 1, "EMAIL": 1}
    assert report["pii"]["rows"] == 2
    assert (report["refusals"]["count"], report["refusals"]["answers"], report["refusals"]["ratio"]) == (3, 20, 0.15)
    assert report["degenerate"]["by_reason"] == {"empty": 1}
    inc = report["inconsistent"]
    assert inc["prompts"] == 2  # the sky prompt, and the mitochondrion near-duplicate pair
    assert {e["prompt"] for e in inc["examples"]} == {"Is the sky green?", "Explain the mitochondrion."}
    assert report["eval_overlap"]["count"] == 1 and report["eval_overlap"]["examples"][0]["where"] == "f:13"
    assert report["labels"] is None


def test_pii_examples_are_redacted(report):
    dumped = json.dumps(report)
    assert "jane.doe@example.com" not in dumped.split('"lengths"')[0] + json.dumps(report["pii"])
    assert "4111 1111" not in json.dumps(report["pii"])
    assert any("<EMAIL>" in e["context"] for e in report["pii"]["examples"])


def test_truncation_and_tokens(report, planted, tokenizer):
    lengths = [len(tokenizer(tokenizer.apply_chat_template(ex.messages, tokenize=False),
                             add_special_tokens=False)["input_ids"]) for ex in planted]
    t = report["lengths"]["truncation"]
    assert t["count"] == sum(n > 80 for n in lengths) == 2
    assert t["fraction"] == 0.1
    assert report["lengths"]["tokens"]["max"] == max(lengths)


def test_findings_and_severities(report):
    sev = _severities(report)
    assert sev == {"Personal data or secrets": "high", "Overlap with evaluation data": "high", "Duplicates": "medium",
                   "Refusals": "medium", "Truncation": "medium", "Inconsistent answers": "medium",
                   "Rows rejected at read": "medium", "Degenerate turns": "low"}
    order = ["high", "medium", "low", "info"]
    ranks = [order.index(f["severity"]) for f in report["findings"]]
    assert ranks == sorted(ranks)
    assert all(set(f) == {"severity", "title", "detail", "action"} for f in report["findings"])


def test_labels_and_imbalance():
    rows = [_chat(i, f"Review number {i}: {'great' if i < 22 else 'awful'} product", "positive" if i < 22 else "negative")
            for i in range(24)]
    r = audit_examples(rows, [], progress=False)
    lab = r["labels"]
    assert lab["counts"] == {"positive": 22, "negative": 2}
    assert lab["imbalance_ratio"] == 11.0 and lab["fractions"]["negative"] == round(2 / 24, 6)
    assert _severities(r)["Class imbalance"] == "medium"
    assert r["lengths"]["tokens"] is None and r["lengths"]["truncation"] is None and r["eval_overlap"] is None


def test_plain_text_rows():
    rows = [Example([], f"Document {i} talks about rivers and mountains in the north.", f"t:{i}") for i in range(3)]
    r = audit_examples(rows, [], progress=False)
    assert r["counts"]["format"] == "text" and r["turns"] is None and "text" in r["lengths"]["chars"]
    assert r["vocabulary"]["of"] == "text" and r["vocabulary"]["top_words"]["rivers"] == 3
    assert "Turns" in render_audit_html(r)


def test_json_is_deterministic(planted, tokenizer, report, tmp_path):
    again = audit_examples(planted, REJECTS, tokenizer=tokenizer, max_length=80, eval_texts=[_EVAL, "unrelated"],
                           source={"path": "planted.jsonl", "sha256": "abc123", "format": "chat"}, progress=False)
    j1, _ = write_audit(report, tmp_path / "a")
    j2, h2 = write_audit(again, tmp_path / "b")
    assert j1.read_bytes() == j2.read_bytes()
    assert json.loads(j1.read_text(encoding="utf-8"))["counts"]["rows"] == 22
    assert h2.name == "data_report.html" and h2.stat().st_size > 0


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.h2, self._in_h2, self.scripts = [], False, 0

    def handle_starttag(self, tag, attrs):
        self._in_h2 = tag == "h2"
        self.scripts += tag == "script"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)
            self._in_h2 = False


def test_html_is_self_contained_and_escaped(report):
    page = render_audit_html(report)
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.h2 == list(SECTION_TITLES)
    assert parser.scripts == 0
    assert "http://" not in page and "https://" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "abc123" in page and "planted.jsonl" in page
    assert page.count("data:image/png;base64,") >= 3  # lengths, tokens, turns, languages
    assert 'class="finding high"' in page


# ------------------------------------------------------------------------------- near-same prompts


_NEAR = [
    ("Explain how photosynthesis works in green plants.", "Plants turn light, water and CO2 into sugar."),
    ("Explain how photosynthesis works in green plant?", "It happens in the mitochondria at night."),  # typo, clash
    ("Please list the three primary colours used when mixing paint.", "Red, yellow and blue."),
    ("Please list the three primary colours used when mixing paints!", "red, yellow and BLUE"),  # same answer
    ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
    ("Who painted the Last Supper?", "Leonardo da Vinci."),
]


def test_near_same_prompts_with_different_answers_are_a_finding():
    from tunelab.data.dedup import jaccard

    # Preconditions: both pairs are near-same as character strings, the Leonardo pair is not.
    def key(t: str) -> str:
        from tunelab.data.dedup import normalize_for_hash

        return normalize_for_hash(t).replace(" ", "")

    assert jaccard(key(_NEAR[0][0]), key(_NEAR[1][0])) > 0.9 and jaccard(key(_NEAR[2][0]), key(_NEAR[3][0])) > 0.9
    assert jaccard(key(_NEAR[4][0]), key(_NEAR[5][0])) < 0.5
    r = audit_examples([_chat(i + 1, u, a) for i, (u, a) in enumerate(_NEAR)], [], progress=False)
    inc = r["inconsistent"]
    assert inc["prompts"] == 0  # no prompt is repeated word for word
    near = inc["near"]
    assert (near["groups"], near["rows"]) == (1, 2)  # the colours pair has one answer, differently written
    [group] = near["examples"]
    assert [e["where"] for e in group] == ["f:1", "f:2"]
    assert [e["answer"] for e in group] == [_NEAR[0][1], _NEAR[1][1]]
    assert group[0]["similarity"] == 1.0 and 0.9 < group[1]["similarity"] < 1.0
    [finding] = [f for f in r["findings"] if f["title"] == "Inconsistent answers"]
    assert finding["severity"] == "medium" and "1 group of near-same prompts has different answers (2 rows)" in \
        finding["detail"]
    page = render_audit_html(r)
    assert "near-same prompts" in page and "It happens in the mitochondria at night." in page


def test_identical_answers_to_near_same_prompts_are_not_flagged():
    rows = [_chat(1, *_NEAR[2]), _chat(2, *_NEAR[3]), _chat(3, _NEAR[0][0], "Light to sugar."),
            _chat(4, _NEAR[1][0], "light to SUGAR!")]
    r = audit_examples(rows, [], progress=False)
    assert r["inconsistent"]["near"]["groups"] == 0
    assert "Inconsistent answers" not in {f["title"] for f in r["findings"]}


def test_a_shared_prompt_template_does_not_make_prompts_near_same():
    from tunelab.data.dedup import jaccard, normalize_for_hash

    template = ("You are a careful annotator. Read the following customer review of a kitchen appliance and decide "
                "whether the customer is satisfied with the product, its price and the delivery. Ignore spelling "
                "mistakes and the length of the review. Answer with exactly one word, positive or negative. "
                "Review: {}")
    reviews = [f"{a} {b} {c}" for a, b, c in zip(_WORDS_A, _WORDS_B, _WORDS_C, strict=True)]
    rows = [_chat(i, template.format(t), "positive" if i % 2 else "negative") for i, t in enumerate(reviews)]
    full = [normalize_for_hash(template.format(t)).replace(" ", "") for t in reviews[:2]]
    assert jaccard(*full) > 0.85  # the template alone would make them near-same
    r = audit_examples(rows, [], progress=False)
    assert r["inconsistent"]["near"]["groups"] == 0
    # The template is recognised only with enough distinct prompts; the texts themselves are still compared.
    rows.append(_chat(99, template.format(reviews[0] + "!"), "positive"))  # same review, conflicting label
    assert audit_examples(rows, [], progress=False)["inconsistent"]["prompts"] == 1


_WORDS_A = ("great", "awful", "noisy", "quiet", "cheap", "pricey", "sturdy", "flimsy", "shiny", "dull", "fast",
            "slow", "handy", "clunky", "sleek", "bulky", "smart", "basic", "lovely", "broken", "solid", "weak")
_WORDS_B = ("blender", "toaster", "kettle", "mixer", "grinder", "juicer", "oven", "fryer", "cooker", "scale",
            "grill", "steamer", "peeler", "slicer", "whisk", "press", "mill", "pot", "pan", "wok", "tray", "rack")
_WORDS_C = ("overall", "indeed", "honestly", "sadly", "luckily", "mostly", "rarely", "always", "never", "often",
            "truly", "barely", "fully", "partly", "simply", "really", "surely", "maybe", "hardly", "nearly",
            "finally", "clearly")


def test_worker_processes_give_the_same_report(planted, tokenizer, report, monkeypatch):
    # Chunks of 4 rows, two spawned workers (language ID, PII and token counts).
    import tunelab.data.audit as audit

    monkeypatch.setattr(audit, "_CHUNK", 4)
    kwargs = dict(tokenizer=tokenizer, max_length=80, eval_texts=[_EVAL, "unrelated"],
                  source={"path": "planted.jsonl", "sha256": "abc123", "format": "chat"}, progress=False)
    calls = []
    monkeypatch.setattr(audit, "_row_pii", lambda turns, f=audit._row_pii: calls.append(1) or f(turns))
    serial = audit_examples(planted, REJECTS, workers=0, **kwargs)
    assert len(calls) == len(planted)  # every row's PII found in this process
    calls.clear()
    parallel = audit_examples(planted, REJECTS, workers=2, **kwargs)
    # The first chunk runs here, the next three go to the workers; later ones run here only when the
    # workers are behind (this process then computes them instead of waiting).
    assert 4 <= len(calls) <= len(planted) - 3 * 4
    assert parallel == serial == report
    assert parallel["pii"]["matches"] > 0 and parallel["languages"]


class _FakePool:
    """Stands in for ProcessPoolExecutor (same constructor and context manager); subclasses define submit."""

    def __init__(self, *a, **k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_broken_worker_pool_falls_back_to_this_process(planted, tokenizer, report, monkeypatch):
    import concurrent.futures

    import tunelab.data.audit as audit

    class Broken(_FakePool):
        def submit(self, *a, **k):
            raise concurrent.futures.process.BrokenProcessPool("a worker was killed")

    monkeypatch.setattr(audit, "_CHUNK", 4)
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Broken)
    again = audit_examples(planted, REJECTS, tokenizer=tokenizer, max_length=80, eval_texts=[_EVAL, "unrelated"],
                           source={"path": "planted.jsonl", "sha256": "abc123", "format": "chat"}, progress=False,
                           workers=1)
    assert again == report


def test_when_the_workers_lag_this_process_computes_chunks_itself(planted, tokenizer, report, monkeypatch):
    import concurrent.futures

    import tunelab.data.audit as audit

    class Lagging(_FakePool):  # a pool whose futures are never done until asked for their result
        submitted: list = []

        def submit(self, fn, arg):
            self.submitted.append(len(arg))
            return type("F", (), {"done": lambda self: False, "result": lambda self: fn(arg)})()

    calls = []
    monkeypatch.setattr(audit, "_CHUNK", 4)
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Lagging)
    monkeypatch.setattr(audit, "_features", lambda exs, f=audit._features: calls.append(len(exs)) or f(exs))
    again = audit_examples(planted, REJECTS, tokenizer=tokenizer, max_length=80, eval_texts=[_EVAL, "unrelated"],
                           source={"path": "planted.jsonl", "sha256": "abc123", "format": "chat"}, progress=False,
                           workers=1)
    assert again == report
    # 20 usable rows = 5 chunks: the first goes through the sections; 2 and 3 were submitted; with the
    # oldest never done, 4 and 5 were computed here at once; each chunk's features computed exactly once
    assert Lagging.submitted == [4, 4] and calls == [4, 4, 4, 4]
