"""The server's feedback files feed `tunelab data from-feedback` as they are written (no field renaming)."""

import json

from tunelab.data.feedback import read_feedback
from tunelab.serving.feedback import feedback_rows


def test_server_rating_rows_are_read_by_from_feedback(tmp_path):
    prompt = [{"role": "user", "content": "Where is my order 42?"}]
    good = feedback_rows("f1", prompt=prompt, response="It ships today.", model="m", response_id="r1",
                         choice_index=0, rating=1, chosen=None, rejected=None, comment=None)["ratings"]
    bad = feedback_rows("f2", prompt=prompt, response="No idea.", model="m", response_id="r2",
                        choice_index=0, rating=-1, chosen=None, rejected=None, comment=None)["ratings"]
    path = tmp_path / "feedback_ratings.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (good, bad)), encoding="utf-8")
    rows, rejects, n = read_feedback(path)
    assert n == 2 and not rejects
    assert [(r.response, r.good) for r in rows] == [("It ships today.", True), ("No idea.", False)]
