"""The curl and `openai` commands `tunelab serve` prints, ready to paste."""

from __future__ import annotations

import json
import shlex

__all__ = ["client_snippets"]


def client_snippets(base_url: str, model: str, key_shown: str) -> str:
    """Both snippets for `model` at `base_url` (e.g. http://127.0.0.1:8000); `key_shown` goes into them
    verbatim (a generated key, or "$TUNELAB_API_KEY" so a user-chosen secret is not echoed)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello in five words."}]})
    auth = f"Authorization: Bearer {key_shown}"
    quoted_auth = f'"{auth}"' if key_shown.startswith("$") else shlex.quote(auth)
    py_key = f'os.environ["{key_shown[1:]}"]' if key_shown.startswith("$") else repr(key_shown)
    return "\n".join([
        "# curl",
        f"curl {base_url}/v1/chat/completions -H {quoted_auth} \\",
        f"  -H 'Content-Type: application/json' -d {shlex.quote(body)}",
        "",
        "# Python (pip install openai)",
        "import os" if key_shown.startswith("$") else "",
        "from openai import OpenAI",
        f'client = OpenAI(base_url="{base_url}/v1", api_key={py_key})',
        f'reply = client.chat.completions.create(model="{model}", messages=[{{"role": "user", '
        '"content": "Say hello in five words."}])',
        "print(reply.choices[0].message.content)",
    ]).replace("\n\n\n", "\n\n")
