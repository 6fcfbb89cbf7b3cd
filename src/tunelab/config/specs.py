"""Typed recipe sections. Each field is documented once here; help text and docs come from these models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "CURATE_STEPS",
    "CleanSpec",
    "CurateSpec",
    "DataSpec",
    "DecontamSpec",
    "DedupSpec",
    "FilterSpec",
    "GeneratorSpec",
    "PiiSpec",
    "EvalSpec",
    "LoraSpec",
    "MethodSpec",
    "ModelSpec",
    "OutputSpec",
    "Recipe",
    "SplitSpec",
    "TrainSpec",
]


class _Spec(BaseModel):
    # Unknown keys are errors (with a did-you-mean added by the loader); assignments are validated too.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitSpec(_Spec):
    validation: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of rows held out for validation.")
    test: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of rows held out for the test split.")
    seed: int = Field(0, description="Seed of the deterministic split (hash of seed and row content).")
    stratify: Literal["auto", "none", "label"] = Field(
        "auto", description="'label' keeps each class's share (the final assistant answer is the label) in every "
        "split, within one row per class; 'auto' does so when the answers look like labels (at least 20 rows, "
        "at most 30 distinct answers of at most 4 words); 'none' assigns each row by its content hash alone."
    )
    group_near_duplicates: bool = Field(
        True, description="Keep exact and near-duplicate rows (MinHash, default dedup settings) in one split, so "
        "no near-duplicate pair straddles train/validation/test; a cluster follows its lowest-hash member."
    )


class CleanSpec(_Spec):
    nfkc: bool = Field(True, description="Unicode NFKC (full-width letters/digits, ligatures, NBSP); keeps "
                       "CJK full-width punctuation and super/subscripts whose folding changes meaning.")
    whitespace: bool = Field(True, description="Drop trailing spaces and the common margin, collapse runs after a "
                             "line's indentation (code stays intact), at most one blank line.")
    control_chars: bool = Field(True, description="Drop control and zero-width characters (keeps newlines, tabs).")
    strip_html: bool = Field(False, description="Remove HTML tags, scripts and styles; unescape entities.")
    fix_mojibake: bool = Field(True, description="Repair mis-decoded text (ftfy), e.g. 'cafÃ©' -> 'café'.")
    lowercase: bool = Field(False, description="Lower-case (classic NLP preprocessing; off for LLMs).")
    remove_special_chars: bool = Field(False, description="Keep only letters, digits, spaces and .,!?'- .")
    numbers_to_words: bool = Field(False, description="Spell out numbers (num2words).")
    remove_stopwords: bool = Field(False, description="Drop English stop words (scikit-learn list).")
    stem: bool = Field(False, description="Snowball/Porter stemming (exclusive with lemmatize).")
    lemmatize: bool = Field(False, description="Lemmatise with simplemma (exclusive with stem).")
    language: str = Field("en", description="Language for numbers, stop words, stemming and lemmas.")

    @model_validator(mode="after")
    def _consistent(self) -> CleanSpec:
        from tunelab.data.clean import CleanOptions

        CleanOptions(**self.model_dump())  # raises ValueError for stem+lemmatize or an unsupported language
        return self


class DedupSpec(_Spec):
    exact: bool = Field(True, description="Drop rows whose normalised text equals an earlier row's.")
    near: bool = Field(True, description="Drop near-duplicates found by MinHash LSH.")
    threshold: float = Field(0.8, gt=0, le=1, description="Estimated Jaccard similarity that confirms a pair.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations.")
    bands: int = Field(16, ge=1, description="LSH bands (rows per band = num_perm / bands).")
    shingle: int = Field(5, ge=1, description="Word n-gram shingle size (character 5-grams for CJK text).")


class PiiSpec(_Spec):
    action: Literal["redact", "drop"] = Field("redact", description="Replace PII with <TYPE> or drop the row.")
    types: list[str] | None = Field(None, description="PII types to handle (default: all; see docs/data.md).")

    @field_validator("types")
    @classmethod
    def _known_types(cls, v: list[str] | None) -> list[str] | None:
        from tunelab.data.pii import PII_TYPES

        unknown = [t for t in v or [] if t.upper() not in PII_TYPES]
        if unknown:
            raise ValueError(f"unknown PII type(s) {unknown}; known: {', '.join(PII_TYPES)}")
        return v


class FilterSpec(_Spec):
    roles: list[str] = Field(["assistant"], description="Turns whose text is checked ('text' rows always are).")
    min_chars: int = Field(1, ge=0, description="Minimum characters per checked turn.")
    max_chars: int = Field(100_000, ge=1, description="Maximum characters per checked turn.")
    max_dup_line_frac: float = Field(0.30, ge=0, le=1, description="Gopher: max fraction of duplicated lines.")
    max_dup_para_frac: float = Field(0.30, ge=0, le=1, description="Gopher: max fraction of duplicated paragraphs.")
    max_symbol_word_ratio: float = Field(0.10, ge=0, description="Gopher: max ('#' + '...') per word.")
    min_alpha_word_frac: float = Field(0.0, ge=0, le=1, description="Min fraction of words with a letter (0.8 for web text).")
    languages: list[str] | None = Field(None, description="Keep only these ISO 639-1 languages (default: all).")
    min_language_confidence: float = Field(0.5, ge=0, le=1, description="Below this, the language filter abstains.")
    drop_refusals: bool = Field(True, description="Drop rows whose answer is a refusal or AI boilerplate.")
    drop_degenerate: bool = Field(True, description="Drop empty, whitespace-only or one-token-repeated turns.")


class DecontamSpec(_Spec):
    n: int = Field(13, ge=3, description="Word n-gram size for overlap (13 as in GPT-3 / Llama 2).")
    files: list[str] = Field(default_factory=list, description="Extra evaluation files to check against.")
    action: Literal["drop", "report"] = Field("drop", description="Drop contaminated training rows or only count them.")


CURATE_STEPS = ("clean", "pii", "filter", "dedup", "decontam")


class GeneratorSpec(_Spec):
    model: str = Field("smollm2-135m-instruct", description="Model that writes or judges text: alias, model "
                       "folder, run folder or cached hub id; with `endpoint`, the model name the server knows.")
    endpoint: str | None = Field(None, description="Base URL of an OpenAI-compatible API (e.g. "
                                 "http://127.0.0.1:8000/v1); null runs `model` locally.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the endpoint's API key.")
    max_new_tokens: int = Field(256, ge=1, description="Generation budget per call.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature (0: greedy).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    batch_size: int = Field(8, ge=1, description="Prompts generated at once by a local model.")
    seed: int = Field(0, description="Sampling seed (same seed, same model: same text).")
    timeout_s: float = Field(120.0, gt=0, description="Endpoint request timeout in seconds.")


class CurateSpec(_Spec):
    steps: list[Literal["clean", "pii", "filter", "dedup", "decontam"]] = Field(
        default_factory=list, description="Curation steps to run on the data before training, in this order."
    )
    clean: CleanSpec = Field(default_factory=CleanSpec, description="Text normalisers.")
    pii: PiiSpec = Field(default_factory=PiiSpec, description="Personal data and secrets.")
    filter: FilterSpec = Field(default_factory=FilterSpec, description="Quality filters (Gopher-style).")
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="Exact and near-duplicate removal.")
    decontam: DecontamSpec = Field(default_factory=DecontamSpec, description="Train/eval n-gram overlap.")


class DataSpec(_Spec):
    path: str = Field(..., description="Training data file (.jsonl, .json, .csv, .tsv, .txt, .parquet).")
    validation_path: str | None = Field(
        None, description="Optional separate validation file; when set, no validation rows are split off."
    )
    test_path: str | None = Field(None, description="Optional separate test file; when set, no test rows are split off.")
    format: Literal["auto", "alpaca", "messages", "sharegpt", "prompt_completion", "text"] = Field(
        "auto", description="Record format; 'auto' detects it from the fields of the first rows."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map canonical fields to your column names, e.g. {prompt: dialogue, completion: summary}.",
    )
    delimiter: str | None = Field(None, description="CSV/TSV delimiter; default ',' for .csv and tab for .tsv.")
    prompt_template: str | None = Field(
        None,
        description="Python format string wrapping the user prompt; '{prompt}' is the prompt, other "
        "'{name}' placeholders are raw columns. Used for label and extraction tasks.",
    )
    system_prompt: str | None = Field(
        None, description="System message prepended to every conversation (else the template's default)."
    )
    max_length: int = Field(512, ge=16, description="Maximum tokens per example after the chat template.")
    overlength: Literal["truncate", "drop"] = Field(
        "drop", description="What to do with examples over max_length; both are counted in the data summary."
    )
    limit: int | None = Field(None, ge=1, description="Use at most this many training rows (after splitting).")
    eval_limit: int | None = Field(None, ge=1, description="Use at most this many validation and test rows each.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Deterministic train/validation/test split.")
    encoding: str = Field("utf-8", description="Text encoding of the input files.")
    on_error: Literal["stop", "skip"] = Field(
        "stop", description="Malformed rows (bad JSON line, non-object record, broken CSV row): stop with "
        "file:line, or skip them into rejects.jsonl (counted)."
    )
    curate: CurateSpec = Field(default_factory=CurateSpec, description="Curation steps run before training.")


class ModelSpec(_Spec):
    name: str = Field(
        "smollm2-135m-instruct",
        description="Builtin alias, a local Hugging Face model folder, or a hub id already in the local cache.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Compute precision: 'auto' uses bf16 autocast where the CPU supports it or on GPU."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to run; 'auto' prefers CUDA.")
    trust_remote_code: bool = Field(False, description="Allow model code from the model folder (off: safer).")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all physical cores).")


class LoraSpec(_Spec):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' for every linear layer but the head."
    )


class MethodSpec(_Spec):
    name: Literal["lora", "full"] = Field("lora", description="Fine-tuning method.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings (used when name is 'lora').")


class TrainSpec(_Spec):
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps with linear warmup.")
    scheduler: Literal["linear", "cosine", "constant"] = Field("cosine", description="LR schedule after warmup.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (null: no clipping).")
    eval_every: int | None = Field(None, ge=1, description="Validation every N optimizer steps (null: at the end).")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without validation-loss improvement."
    )
    log_every: int = Field(5, ge=1, description="Write a metrics.jsonl row every N optimizer steps.")
    seed: int = Field(0, description="Seed for initialisation, data order and dropout.")
    batching: Literal["length_grouped", "packed", "padded"] = Field(
        "length_grouped",
        description="'length_grouped' batches similar lengths (little padding), 'packed' concatenates "
        "examples with per-document attention, 'padded' pads every batch to max_length (the slow baseline).",
    )


class EvalSpec(_Spec):
    enabled: bool = Field(True, description="Evaluate after training (tunelab run) .")
    task: Literal["auto", "json", "label", "text"] = Field(
        "auto", description="Metric family for generated answers; 'auto' picks from the references."
    )
    max_new_tokens: int = Field(128, ge=1, description="Generation budget per test example.")
    batch_size: int = Field(16, ge=1, description="Examples generated at once.")
    max_samples: int | None = Field(100, ge=1, description="Evaluate at most this many test examples.")
    compare_base: bool = Field(True, description="Also evaluate the base model on the same split.")
    labels: list[str] | None = Field(None, description="Label set for label tasks (default: from the data).")


class OutputSpec(_Spec):
    dir: str = Field("runs", description="Folder that holds run folders.")
    name: str | None = Field(None, description="Run folder name (default: recipe name and a timestamp).")
    overwrite: bool = Field(False, description="Replace an existing run folder of the same name.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or "\\" in v or v in {".", ".."}):
            raise ValueError("must be a plain folder name (no '/', '\\', '.' or '..')")
        return v


class Recipe(_Spec):
    data: DataSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    method: MethodSpec = Field(default_factory=MethodSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        s = self.data.split
        if s.validation + s.test >= 0.9:
            raise ValueError("data.split.validation + data.split.test must leave at least 10% for training")
        return self
