"""Generation engines behind one Protocol (`Engine`): Transformers (default) and vLLM (CUDA, optional)."""

from tunelab.serving.engines.base import (
    Engine,
    EngineError,
    EngineOverloaded,
    EngineStats,
    Finish,
    GenerationRequest,
    GenerationStream,
    SamplingParams,
    TokenEvent,
)

__all__ = [
    "Engine", "EngineError", "EngineOverloaded", "EngineStats", "Finish", "GenerationRequest", "GenerationStream",
    "SamplingParams", "TokenEvent",
]
