"""Request and response shapes of the OpenAI-compatible API (the OpenAPI document is generated from these).

Requests are strict: unknown fields, wrong JSON types, out-of-range numbers, unpaired surrogates and empty
texts are rejected with 400 before any model work. Limits that depend on the server's settings (`n`, stop
count, prompt length, `max_tokens` against the context) are checked by the handlers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ChatCompletion", "ChatCompletionChunk", "ChatCompletionRequest", "ChatMessage", "Completion",
    "CompletionRequest", "EmbeddingList", "EmbeddingRequest", "EngineStatsResponse", "ErrorBody",
    "ErrorResponse", "FeedbackAck", "FeedbackRequest", "Health", "ModelCard", "ModelList", "Ready", "Usage",
]

MAX_TEXT = 1_000_000  # characters in one text field (the body limit usually binds first)
INT64 = 2**63


def _no_surrogates(v: str) -> str:
    # Lone UTF-16 surrogates (from "\ud800" escapes) are not text: tokenizers cannot encode them.
    if any("\ud800" <= ch <= "\udfff" for ch in v):
        raise ValueError("contains an unpaired UTF-16 surrogate")
    return v


Text = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(_no_surrogates)]
NonEmptyText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT), AfterValidator(_no_surrogates)]
ModelId = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_no_surrogates)]
StopText = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_no_surrogates)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------------ requests
class TextPart(_Request):
    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: Text = Field(description="The text.")


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="Who wrote the message; 'developer' is treated as 'system'."
    )
    content: Text | Annotated[list[TextPart], Field(min_length=1, max_length=256)] = Field(
        description="The message text, or a list of text parts joined without separator."
    )
    name: ModelId | None = Field(None, description="Accepted for compatibility; not shown to the model.")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Request):
    include_usage: bool = Field(False, description="Send a last chunk with token usage before [DONE].")


class ResponseFormat(_Request):
    type: Literal["text", "json_object"] = Field(
        description="'json_object' constrains the answer to one JSON object (see docs/serving.md)."
    )


class _Sampling(_Request):
    """Fields shared by chat and text completions."""

    model: ModelId = Field(description="A served model id (GET /v1/models).")
    max_tokens: int | None = Field(None, ge=1, le=INT64 - 1, description="Most tokens to generate "
                                   "(default: the server's default, bounded by the context left).")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy; default 1.")
    top_p: float | None = Field(None, ge=0.0, le=1.0, description="Nucleus sampling mass; default 1.")
    n: int | None = Field(None, ge=1, le=128, description="Choices to generate (server cap: serve.max_n).")
    stream: bool | None = Field(None, description="Send tokens as server-sent events while they are produced.")
    stream_options: StreamOptions | None = Field(None, description="Streaming options.")
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = Field(
        None, description="Up to 4 sequences that end the answer (not included in it)."
    )
    seed: int | None = Field(None, ge=-INT64, le=2 * INT64 - 1, description="Makes sampling reproducible.")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Penalty for any repeat.")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Penalty per repeat.")
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=1024)] | None = Field(
        None, description="Token id (as a string) -> bias added to its logit."
    )
    user: ModelId | None = Field(None, description="End-user id (accepted, not used).")


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=4096)] = Field(
        description="The conversation so far; it ends with the turn to answer."
    )
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64 - 1, description="Alias of max_tokens.")
    logprobs: bool | None = Field(None, description="Return the log-probability of each output token.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Also the k most likely tokens per "
                                     "position (needs logprobs: true).")
    response_format: ResponseFormat | None = Field(None, description="'json_object' for a JSON object answer.")

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens differ; send one of them")
        return self


class CompletionRequest(_Sampling):
    prompt: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=128)] = Field(
        description="The text to continue, or a list of texts (each gets n choices)."
    )
    echo: bool | None = Field(None, description="Put the prompt in front of each answer.")
    logprobs: int | None = Field(None, ge=0, le=5, description="Return log-probabilities of each output token "
                                 "and of the k most likely ones.")

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs (prompt log-probabilities) is not supported")
        return self


class EmbeddingRequest(_Request):
    model: ModelId = Field(description="The served embedding model id.")
    input: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=2048)] = Field(
        description="A text or a list of texts."
    )
    encoding_format: Literal["float", "base64"] = Field("float", description="Floats, or base64 of float32 bytes.")
    user: ModelId | None = Field(None, description="End-user id (accepted, not used).")


class FeedbackRequest(_Request):
    response_id: ModelId | None = Field(None, description="The `id` of a chat or text completion this server "
                                        "returned; it supplies prompt, answer and model.")
    choice_index: int = Field(0, ge=0, le=10_000, description="Which choice of that response.")
    rating: Literal[-1, 1] | None = Field(None, description="+1 good answer, -1 bad answer.")
    chosen: NonEmptyText | None = Field(None, description="A preferred answer (e.g. the user's correction).")
    rejected: NonEmptyText | None = Field(None, description="The dispreferred answer (default: the response's).")
    comment: Text | None = Field(None, description="Free text kept with the record.")
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=4096)] | None = Field(
        None, description="The prompt, when response_id is unknown to this server."
    )
    response: NonEmptyText | None = Field(None, description="The answer, when response_id is unknown.")
    model: ModelId | None = Field(None, description="The model that answered, when response_id is unknown.")

    @model_validator(mode="after")
    def _check(self) -> FeedbackRequest:
        if self.rating is None and self.chosen is None:
            raise ValueError("give a rating (+1/-1) or a chosen answer (with or without rejected)")
        if self.rejected is not None and self.chosen is None:
            raise ValueError("rejected needs chosen")
        if self.response_id is None:
            if self.messages is None:
                raise ValueError("without response_id, send messages (the prompt)")
            if self.response is None and (self.rating is not None or self.rejected is None):
                raise ValueError("without response_id, send response (the answer rated or replaced)")
        return self


# ----------------------------------------------------------------------------------------------- responses
class ErrorBody(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorBody


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunelab"
    kind: Literal["chat", "embedding"] = Field(description="What the model serves.")
    source: str = Field(description="Where it comes from (run folder, base model).")
    context_length: int


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Response):
    content: list[TokenLogprob]


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Response):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(_Response):
    """One server-sent event of a streamed chat completion (`data: {...}`; the stream ends with `data: [DONE]`)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(_Response):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(_Response):
    """A text completion; streamed as events of this same shape with `finish_reason` null until the end."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class EmbeddingItem(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingList(_Response):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class FeedbackAck(_Response):
    id: str
    object: Literal["feedback"] = "feedback"
    created: int
    stored: list[str] = Field(description="Files the record was appended to.")


class Health(_Response):
    status: Literal["ok"] = "ok"


class Ready(_Response):
    status: Literal["ready"] = "ready"
    models: list[str]


class EngineStatsResponse(_Response):
    engine: str
    waiting: int
    running: int
    generated_tokens: int
    finished_requests: int
    cancelled_requests: int
    decode_steps: int
    mean_batch_rows: float
    running_tokens: dict[str, int] = Field(description="Tokens generated so far per running request id.")
    extra: dict[str, Any]
