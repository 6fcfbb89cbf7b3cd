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
