"""`response_format: {"type": "json_object"}`: constrain decoding so the answer is one JSON object.

A character-level pushdown recognizer (`feed`) accepts exactly the prefixes of RFC 8259 documents whose
top-level value is an object, starting with its `{` (no leading whitespace), with runs of whitespace
between tokens limited to `MAX_WHITESPACE` characters (so a model cannot stall forever in indentation). `JsonConstraint` applies it to tokens: a
candidate token is allowed when all of its characters extend a valid prefix. Candidates are tried in
order of preference, so the cost is a few characters per step, not the whole vocabulary.

Guarantee: when generation ends because the object closed, the text parses with `json.loads` to a dict.
It ends that way as soon as the top-level `}` is produced (the engine stops the request there). If
`max_tokens` runs out first, the text is a valid prefix of such an object and finish_reason is "length".
Special tokens and tokens that decode to partial UTF-8 characters are never chosen in JSON mode.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["MAX_WHITESPACE", "JsonConstraint", "JsonState", "JsonVocab", "feed", "feed_text", "initial_state"]

MAX_WHITESPACE = 24  # longest whitespace run between JSON tokens (deep pretty-printing stays possible)
_WS = " \t\n\r"
_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"
_ESCAPES = '"\\/bfnrt'
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
_CLOSERS = {"o": "}", "a": "]"}
_NUMBER_END_OK = {"zero", "int", "frac", "exp"}


class JsonState(NamedTuple):
    """Immutable recognizer state (cheap to keep per candidate).

    mode: start | value | arr_first | obj_first | obj_key | colon | after | string | number | literal | done
    stack: open containers, 'o' (object) or 'a' (array), innermost last.
    aux: mode detail (string: (is_key, escape state); number: sub-state; literal: characters left).
    ws: length of the current whitespace run.
    """

    mode: str
    stack: tuple[str, ...]
    aux: object
    ws: int


def initial_state() -> JsonState:
    return JsonState("start", (), None, 0)


def _after_value(st: JsonState) -> JsonState:
    return JsonState("after" if st.stack else "done", st.stack, None, 0)


def _start_value(st: JsonState, ch: str) -> JsonState | None:
    """A value begins with `ch` (mode was value/arr_first)."""
    if ch == "{":
        return JsonState("obj_first", (*st.stack, "o"), None, 0)
    if ch == "[":
        return JsonState("arr_first", (*st.stack, "a"), None, 0)
    if ch == '"':
        return JsonState("string", st.stack, (False, 0), 0)
    if ch == "-":
        return JsonState("number", st.stack, "sign", 0)
    if ch in _DIGITS:
        return JsonState("number", st.stack, "zero" if ch == "0" else "int", 0)
    if ch in _LITERALS:
        return JsonState("literal", st.stack, _LITERALS[ch], 0)
    return None


def _string(st: JsonState, ch: str) -> JsonState | None:
    is_key, esc = st.aux  # type: ignore[misc]
    if esc == 0:
        if ch == '"':
            return JsonState("colon", st.stack, None, 0) if is_key else _after_value(st)
        if ch == "\\":
            return JsonState("string", st.stack, (is_key, 1), 0)
        return None if ord(ch) < 0x20 else st
    if esc == 1:
        if ch == "u":
            return JsonState("string", st.stack, (is_key, 5), 0)  # 4 hex digits follow (5 - 1 .. 5 - 4)
        return JsonState("string", st.stack, (is_key, 0), 0) if ch in _ESCAPES else None
    if ch not in _HEX:
        return None
    return JsonState("string", st.stack, (is_key, 0 if esc == 2 else esc - 1), 0)


_NUMBER_NEXT = {
    "sign": {**dict.fromkeys("0", "zero"), **dict.fromkeys("123456789", "int")},
    "zero": {".": "dot", "e": "e", "E": "e"},
    "int": {**dict.fromkeys(_DIGITS, "int"), ".": "dot", "e": "e", "E": "e"},
    "dot": dict.fromkeys(_DIGITS, "frac"),
    "frac": {**dict.fromkeys(_DIGITS, "frac"), "e": "e", "E": "e"},
    "e": {**dict.fromkeys(_DIGITS, "exp"), "+": "esign", "-": "esign"},
    "esign": dict.fromkeys(_DIGITS, "exp"),
    "exp": dict.fromkeys(_DIGITS, "exp"),
}


def _number(st: JsonState, ch: str) -> JsonState | None:
    nxt = _NUMBER_NEXT[st.aux].get(ch)  # type: ignore[index]
    if nxt is not None:
        return JsonState("number", st.stack, nxt, 0)
    if st.aux not in _NUMBER_END_OK:
        return None
    return feed(_after_value(st), ch)  # the number ended; `ch` belongs to what follows it


def _structural(st: JsonState, ch: str) -> JsonState | None:
    """Modes between tokens: start, value, arr_first, obj_first, obj_key, colon, after."""
    mode = st.mode
    if ch in _WS:
        if mode == "start" or st.ws >= MAX_WHITESPACE:  # the answer starts with '{' itself
            return None
        return JsonState(mode, st.stack, st.aux, st.ws + 1)
    if mode == "start":
        return JsonState("obj_first", ("o",), None, 0) if ch == "{" else None
    if mode == "value":
        return _start_value(st, ch)
    if mode == "arr_first":
        return _close(st) if ch == "]" else _start_value(st, ch)
    if mode in ("obj_first", "obj_key"):
        if ch == '"':
            return JsonState("string", st.stack, (True, 0), 0)
        return _close(st) if ch == "}" and mode == "obj_first" else None
    if mode == "colon":
        return JsonState("value", st.stack, None, 0) if ch == ":" else None
    # mode == "after": a comma or the closer of the innermost container
    top = st.stack[-1]
    if ch == ",":
        return JsonState("obj_key" if top == "o" else "value", st.stack, None, 0)
    return _close(st) if ch == _CLOSERS[top] else None


def _close(st: JsonState) -> JsonState:
    stack = st.stack[:-1]
    return JsonState("after" if stack else "done", stack, None, 0)


def feed(st: JsonState, ch: str) -> JsonState | None:
    """The state after one more character, or None when the text can no longer become a JSON object."""
    mode = st.mode
    if mode == "string":
        return _string(st, ch)
    if mode == "number":
        return _number(st, ch)
    if mode == "literal":
        rest = st.aux
        if ch != rest[0]:  # type: ignore[index]
            return None
        return _after_value(st) if len(rest) == 1 else JsonState("literal", st.stack, rest[1:], 0)  # type: ignore[index,arg-type]
    if mode == "done":
        return None  # the engine stops at the closing brace; nothing may follow
    return _structural(st, ch)


def feed_text(st: JsonState | None, text: str) -> JsonState | None:
    for ch in text:
        if st is None:
            return None
        st = feed(st, ch)
    return st


class JsonVocab:
    """Each token's text for JSON checks; None for special tokens and partial UTF-8 pieces (never allowed)."""

    def __init__(self, tokenizer, vocab_size: int):
        n = min(len(tokenizer), vocab_size)
        texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        special = set(tokenizer.all_special_ids)
        self.texts: list[str | None] = [
            None if (i in special or not t or "\ufffd" in t) else t for i, t in enumerate(texts)
        ] + [None] * (vocab_size - n)


class JsonConstraint:
    """Per-request JSON-object constraint over a `JsonVocab` (one per request; holds the current state)."""

    def __init__(self, vocab: JsonVocab):
        self.vocab = vocab
        self.state: JsonState = initial_state()

    @property
    def done(self) -> bool:
        """True once the top-level object has closed: the request must stop now."""
        return self.state.mode == "done"

    def try_token(self, token_id: int) -> JsonState | None:
        text = self.vocab.texts[token_id] if 0 <= token_id < len(self.vocab.texts) else None
        return None if text is None else feed_text(self.state, text)

    def accept(self, state: JsonState) -> None:
        self.state = state
