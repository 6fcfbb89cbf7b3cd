"""Typed recipe sections. Each field is documented once here; help text and docs come from these models."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.errors import TunelabError

__all__ = [
    "CURATE_STEPS",
    "AugmentSpec",
    "BaselinesSpec",
    "BootstrapSpec",
    "BiasSpec",
    "CleanSpec",
    "CurateSpec",
    "DataSpec",
    "DecontamSpec",
    "DedupSpec",
    "FilterSpec",
    "GeneralSetSpec",
    "GeneratorSpec",
    "JudgeSpec",
    "MixtureSource",
    "PiiSpec",
    "EvalJudgeSpec",
    "EvalSpec",
    "PerplexitySpec",
    "FreezeSpec",
    "IA3Spec",
    "LoraSpec",
    "MethodSpec",
    "ModelSpec",
    "OutputSpec",
    "PPOSpec",
    "PreferenceSpec",
    "PrefixSpec",
    "PromptSpec",
    "PtuningSpec",
    "QLoraSpec",
    "RLSpec",
    "Recipe",
    "RewardModelSpec",
    "RewardSpec",
    "ScoreSpec",
    "ServeSpec",
    "SplitSpec",
    "SweepSpec",
    "ParamSpec",
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


CURATE_STEPS = ("clean", "pii", "filter", "dedup", "decontam", "score", "augment")


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


class JudgeSpec(GeneratorSpec):
    # A judge must be reproducible and answer in a few tokens: greedy and short by default, also when a
    # recipe sets only some of the generator keys (a plain GeneratorSpec would come back at 0.7).
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature (0: greedy, deterministic).")
    max_new_tokens: int = Field(16, ge=1, description="Reply budget in `mode: generate` (a digit is enough).")


class ScoreSpec(_Spec):
    rubric: str | None = Field(None, description="Rubric text shown to the judge; null uses the builtin rubric "
                               "(helpfulness, correctness, clarity, instruction following; 1-5, see docs/data.md).")
    rubric_file: str | None = Field(None, description="Read the rubric from this text file instead (not with "
                                    "`rubric`).")
    mode: Literal["probs", "generate"] = Field(
        "probs", description="'probs': the expected score under the judge's next-token probabilities of "
        "'1'..'5' (G-Eval; deterministic; endpoints must return logprobs); 'generate': the first digit 1-5 of "
        "the judge's reply (endpoints without logprobs); a reply without one leaves the row unscored."
    )
    min_score: float | None = Field(None, ge=1, le=5, description="Drop rows that score below this.")
    keep_top: int | None = Field(None, ge=1, description="Keep only the N best-scoring rows (ties: the earlier row).")
    max_chars: int = Field(2000, ge=100, description="Characters of the prompt and of the answer shown to the "
                           "judge; longer ones are cut and marked as cut.")
    generator: JudgeSpec = Field(default_factory=JudgeSpec, description="The judge: a local model or an "
                                 "OpenAI-compatible endpoint (greedy by default).")

    @model_validator(mode="after")
    def _one_rubric(self) -> ScoreSpec:
        if self.rubric is not None and self.rubric_file is not None:
            raise ValueError("set either rubric or rubric_file, not both")
        return self


# Self-Instruct's filter (Wang et al. 2022): tasks a text-only model cannot do.
_BLOCKED_KEYWORDS = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                     "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]


class AugmentSpec(_Spec):
    ops: list[Literal["synonym", "insert", "swap", "delete", "paraphrase", "self_instruct", "back_translate"]] = Field(
        default_factory=lambda: ["synonym", "insert", "swap", "delete"], min_length=1,
        description="What to generate: EDA rewrites 'synonym', 'insert', 'swap', 'delete' (WordNet, no model); "
        "'paraphrase' (the generator rewrites the turns of `roles`); 'self_instruct' (new instructions and "
        "answers from seed examples); 'back_translate' (an instruction for each answer or document).",
    )
    copies: int = Field(1, ge=1, le=64, description="New rows per source row and op (all ops but self_instruct).")
    alpha: float = Field(0.1, gt=0, le=0.5, description="EDA strength: fraction of a turn's plain words replaced, "
                         "inserted or swapped (at least one), and each word's deletion probability.")
    roles: list[Literal["system", "user", "assistant"]] = Field(
        default_factory=lambda: ["user"], min_length=1,
        description="Turns rewritten by the EDA ops and paraphrase (plain-text rows are always rewritten).")
    num_instructions: int = Field(20, ge=1, description="self_instruct: candidate instructions to generate "
                                  "(accepted ones can be fewer).")
    seed_examples: int = Field(4, ge=1, le=16, description="self_instruct: example instructions per prompt (about "
                               "a quarter from already generated ones once there are some).")
    seed_top: int | None = Field(None, ge=1, description="self_instruct: draw examples only from the N rows with "
                                 "the highest 'score' (a numeric column or `score` step result); null: all rows.")
    max_similarity: float = Field(0.7, gt=0, le=1, description="Reject a generated instruction whose ROUGE-L with "
                                  "an existing or earlier instruction (back_translate: with its own text) is at "
                                  "least this.")
    min_similarity: float = Field(0.3, ge=0, lt=1, description="paraphrase: reject a rewrite whose ROUGE-L with "
                                  "its source is below this (the meaning drifted).")
    max_length_ratio: float = Field(2.0, ge=1, description="paraphrase: reject a rewrite more than this many "
                                    "times longer or shorter (characters) than its source.")
    min_words: int = Field(3, ge=1, description="Reject generated instructions with fewer words.")
    max_words: int = Field(150, ge=1, description="Reject generated instructions with more words.")
    blocked_keywords: list[str] = Field(default_factory=lambda: list(_BLOCKED_KEYWORDS),
                                        description="self_instruct: reject instructions containing any of these.")
    keep_originals: bool = Field(True, description="Keep the source rows; false keeps only the accepted new rows "
                                 "(e.g. back-translated pairs from plain-text documents).")
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec, description="Model for paraphrase, "
                                     "self_instruct and back_translate: local or an OpenAI-compatible endpoint.")
    seed: int = Field(0, description="Seed of the EDA rewrites and of self-instruct's example sampling.")

    @model_validator(mode="after")
    def _bounds(self) -> AugmentSpec:
        if self.min_words > self.max_words:
            raise ValueError("min_words must not exceed max_words")
        return self


class CurateSpec(_Spec):
    steps: list[Literal["clean", "pii", "filter", "dedup", "decontam", "score", "augment"]] = Field(
        default_factory=list, description="Curation steps to run on the data before training, in this order."
    )
    clean: CleanSpec = Field(default_factory=CleanSpec, description="Text normalisers.")
    pii: PiiSpec = Field(default_factory=PiiSpec, description="Personal data and secrets.")
    filter: FilterSpec = Field(default_factory=FilterSpec, description="Quality filters (Gopher-style).")
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="Exact and near-duplicate removal.")
    decontam: DecontamSpec = Field(default_factory=DecontamSpec, description="Train/eval n-gram overlap.")
    score: ScoreSpec = Field(default_factory=ScoreSpec, description="LLM-as-judge quality scores; keep the best.")
    augment: AugmentSpec = Field(default_factory=AugmentSpec, description="New rows: EDA rewrites, paraphrases, "
                                 "self-instruct and instruction back-translation (marked synthetic).")


DataFormat = Literal["auto", "alpaca", "messages", "sharegpt", "prompt_completion", "text",
                     # preference data (train.objective=preference; see docs/preferences.md)
                     "pairs", "sharegpt_pairs", "hh", "unpaired"]


class MixtureSource(_Spec):
    path: str = Field(..., description="Data file of this source (anything data.path accepts).")
    name: str | None = Field(None, description="Name of the source in data_summary.json (default: file name).")
    weight: float = Field(1.0, gt=0, description="Share of the training split drawn from this source "
                          "(weights are normalised over all sources).")
    format: DataFormat | None = Field(None, description="Record format of this source (null: data.format).")
    columns: dict[str, str] | None = Field(None, description="Column mapping of this source (null: data.columns).")
    delimiter: str | None = Field(None, description="Delimiter of this source (null: data.delimiter).")
    prompt_template: str | None = Field(None, description="Prompt template of this source (null: "
                                        "data.prompt_template).")
    system_prompt: str | None = Field(None, description="System prompt of this source (null: data.system_prompt).")
    label_column: str | None = Field(None, description="Label column of this source (null: data.label_column).")


def _check_mixture(entries: object) -> object:
    """Validate each data.mixture entry here so that an error names it (`data.mixture[1].path`)."""
    import difflib

    if not isinstance(entries, list):
        return entries  # pydantic reports the wrong type
    for i, entry in enumerate(entries):
        try:
            MixtureSource.model_validate(entry)
        except ValidationError as e:
            # Unknown keys first: they usually explain a missing one (a misspelt 'path').
            err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
            key = f"data.mixture[{i}]" + "".join(f".{p}" for p in err["loc"])
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(err["loc"][-1]), list(MixtureSource.model_fields), n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"keys: {', '.join(MixtureSource.model_fields)}"
                raise TunelabError("unknown key", where=key, fix=fix) from None
            raise TunelabError(err["msg"][:1].lower() + err["msg"][1:], where=key,
                               fix="each entry needs a path; weight > 0; see docs/objectives.md") from None
    return entries


class DataSpec(_Spec):
    path: str | None = Field(
        None, description="Training data file (.jsonl, .json, .csv, .tsv, .txt, .parquet); required unless "
        "data.mixture lists the sources (it then names the first one)."
    )
    validation_path: str | None = Field(
        None, description="Optional separate validation file; when set, no validation rows are split off."
    )
    test_path: str | None = Field(None, description="Optional separate test file; when set, no test rows are split off.")
    format: DataFormat = Field("auto", description="Record format; 'auto' detects it from the fields of the first rows.")
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
    packing: Literal["auto", "none", "blocks"] = Field(
        "auto", description="'blocks' joins plain-text documents (EOS between them) and cuts them into blocks of "
        "max_length tokens, every token a label (continued pretraining); 'none' keeps one example per row; "
        "'auto' is blocks for train.objective=pretrain, none otherwise."
    )
    label_column: str | None = Field(
        None, description="train.objective=classify: the raw column holding each row's label (default: the "
        "final assistant answer, or a 'label' column for plain-text rows)."
    )
    score_column: str | None = Field(
        None, description="Raw column with a numeric difficulty per row (low = easy) for train.curriculum=score; "
        "rows without a number are rejected (counted)."
    )
    mixture: list[MixtureSource] = Field(
        default_factory=list, description="Several sources instead of data.path: entries {path, weight, name, "
        "format, columns, delimiter, prompt_template, system_prompt, label_column}. Each source is split on its "
        "own (validation/test per source); the training split draws weight-proportional rows from them "
        "(seeded by data.split.seed; data.limit rows in all, else the total available; a source is repeated "
        "when its share exceeds its rows)."
    )

    @field_validator("mixture", mode="before")
    @classmethod
    def _mixture_entries(cls, v: object) -> object:
        return _check_mixture(v)

    @model_validator(mode="after")
    def _sources(self) -> DataSpec:
        if not self.mixture:
            if self.path is None:
                raise TunelabError("missing required key 'data.path'", where="data.path",
                                   fix="add it to the recipe or pass it as an override, or list sources in "
                                   "data.mixture")
            return self
        if self.path not in (None, self.mixture[0].path):
            raise TunelabError("data.path and data.mixture are both set", where="data.path",
                               fix="list every source in data.mixture (data.path then names the first one)")
        for key in ("validation_path", "test_path"):
            if getattr(self, key):
                raise TunelabError(f"data.{key} cannot be combined with data.mixture (each source is split on "
                                   "its own)", where=f"data.{key}", fix="remove it; use data.split fractions")
        if self.path is None:
            # Lineage (manifest, dataset identity) reads data.path; it names the first source.
            self.path = self.mixture[0].path
        return self


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
    rslora: bool = Field(False, description="Rank-stabilised LoRA: scale = alpha / sqrt(r) instead of alpha / r.")
    dora: bool = Field(False, description="DoRA: learn a magnitude vector per output and the LoRA direction.")
    init: Literal["default", "gaussian", "pissa", "pissa_fast", "olora"] = Field(
        "default", description="Adapter initialisation: 'default' (B = 0, A Kaiming), 'gaussian' (A Gaussian), "
        "'pissa' (principal singular vectors, exact SVD), 'pissa_fast' (randomised SVD, 16 iterations), "
        "'olora' (QR of the weights). PiSSA/OLoRA move the base weights: the adapter then reloads by "
        "re-running the same deterministic initialisation on the base."
    )
    plus_ratio: float | None = Field(
        None, gt=0, description="LoRA+: learning rate of the B matrices = train.lr x this ratio (the paper "
        "uses 16); null: one learning rate for all."
    )


class QLoraSpec(_Spec):
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen base (bitsandbytes).")
    double_quant: bool = Field(True, description="Quantise the quantisation constants too (saves ~0.4 bit/weight).")


class FreezeSpec(_Spec):
    top_k_blocks: int = Field(2, ge=0, description="Train the last k transformer blocks (0: none).")
    train_head: bool = Field(True, description="Train the output head; with tied embeddings (SmolLM2) this also "
                             "trains the input embedding, which is the same matrix.")
    train_embeddings: bool = Field(False, description="Train the input token embedding.")
    train_final_norm: bool = Field(True, description="Train the normalisation layer before the head.")

    @model_validator(mode="after")
    def _something_trains(self) -> FreezeSpec:
        if not (self.top_k_blocks or self.train_head or self.train_embeddings or self.train_final_norm):
            raise ValueError("nothing would be trained: set top_k_blocks > 0 or one of train_head, "
                             "train_embeddings, train_final_norm")
        return self


class PrefixSpec(_Spec):
    num_virtual_tokens: int = Field(20, ge=1, description="Prefix length: key/value pairs added to every layer.")
    init: Literal["text", "random"] = Field(
        "text", description="'text' starts each layer's prefix from the keys/values the model computes for "
        "init_text (Li & Liang 2021: real activations; a random prefix disrupts a pretrained model, measured "
        "validation loss 11.8 vs 2 on emotion); 'random' is PEFT's N(0, 1) init."
    )
    init_text: str = Field("You are a helpful assistant. Read the request and answer it accurately.",
                           min_length=1, description="Text whose activations start the prefix (with init: text).")
    projection: bool = Field(False, description="Reparameterise the prefix through a 2-layer MLP (more stable, "
                             "more parameters during training; needs init: random).")
    encoder_hidden_size: int = Field(256, ge=1, description="Hidden size of that MLP (with projection).")

    @model_validator(mode="after")
    def _init_fits(self) -> PrefixSpec:
        if self.projection and self.init == "text":
            raise ValueError("init: text sets the prefix itself, which a projection MLP would re-map; "
                             "use init: random with projection: true")
        return self


class PromptSpec(_Spec):
    num_virtual_tokens: int = Field(20, ge=1, description="Soft-prompt length (embeddings prepended to the input).")
    init: Literal["random", "text"] = Field("random", description="Start from random embeddings or from the "
                                            "embeddings of init_text (repeated or cut to num_virtual_tokens).")
    init_text: str | None = Field(None, description="Text whose token embeddings start the soft prompt "
                                  "(with init: text), e.g. the task instruction.")

    @model_validator(mode="after")
    def _text_given(self) -> PromptSpec:
        if self.init == "text" and not (self.init_text or "").strip():
            raise ValueError("init: text needs init_text (e.g. the task instruction)")
        return self


class PtuningSpec(_Spec):
    num_virtual_tokens: int = Field(20, ge=1, description="Number of virtual tokens produced by the prompt encoder.")
    encoder: Literal["mlp", "lstm"] = Field("mlp", description="Prompt encoder that produces the virtual tokens.")
    encoder_hidden_size: int = Field(128, ge=1, description="Hidden size of the prompt encoder.")
    encoder_num_layers: int = Field(2, ge=1, description="Layers of the prompt encoder (LSTM only).")
    encoder_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the prompt encoder.")


class IA3Spec(_Spec):
    target_modules: list[str] | str | None = Field(
        None, description="Modules whose activations are rescaled: names, 'all-linear', or null for PEFT's "
        "choice for the architecture (LLaMA: k_proj, v_proj, down_proj)."
    )
    feedforward_modules: list[str] | None = Field(
        None, description="Which targets are feed-forward (scaled on their input, not output); null: PEFT's "
        "choice, or with explicit target_modules those named like down_proj/fc2/w2."
    )


class BottleneckSpec(_Spec):
    reduction_factor: float | None = Field(
        None, ge=1.0, description="Bottleneck width = hidden size / this factor, rounded down (null: 16 unless "
        "size is set; SmolLM2-135M: 576 / 16 = 36)."
    )
    size: int | None = Field(None, ge=1, description="Bottleneck width r (d -> r -> d); set this or reduction_factor.")
    placement: Literal["pfeiffer", "houlsby"] = Field(
        "pfeiffer", description="'pfeiffer': one adapter after each block's MLP output; 'houlsby': one after the "
        "attention output and one after the MLP output (twice the parameters)."
    )
    activation: Literal["relu", "gelu", "swish"] = Field("relu", description="Non-linearity between down and up.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the bottleneck activations (training only).")
    layers: list[int] | None = Field(
        None, description="Indices of the decoder blocks that get adapters (0 = first; negative counts from the "
        "end); null: every block."
    )

    @model_validator(mode="after")
    def _one_width(self) -> BottleneckSpec:
        if self.size is not None and self.reduction_factor is not None:
            raise ValueError("set either size or reduction_factor, not both")
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
            raise ValueError("layers must list distinct block indices (or be null for every block)")
        return self


MethodName = Literal["full", "freeze", "lora", "qlora", "prefix", "prompt", "ptuning", "ia3", "bottleneck"]


class MethodSpec(_Spec):
    name: MethodName = Field(
        "lora", description="Fine-tuning method: 'full' (all weights), 'freeze' (top blocks and/or head), 'lora' "
        "(incl. rsLoRA, DoRA, PiSSA, LoRA+), 'qlora' (LoRA on a 4-bit base, CUDA only), 'prefix', 'prompt', "
        "'ptuning' (prompt learning), 'ia3', 'bottleneck' (Houlsby/Pfeiffer adapters, tunelab's own). Only the "
        "section of the chosen method is read."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings (name 'lora' or 'qlora').")
    qlora: QLoraSpec = Field(default_factory=QLoraSpec, description="4-bit base settings (name 'qlora').")
    freeze: FreezeSpec = Field(default_factory=FreezeSpec, description="What trains with name 'freeze'.")
    prefix: PrefixSpec = Field(default_factory=PrefixSpec, description="Prefix tuning (name 'prefix').")
    prompt: PromptSpec = Field(default_factory=PromptSpec, description="Prompt tuning (name 'prompt').")
    ptuning: PtuningSpec = Field(default_factory=PtuningSpec, description="P-tuning (name 'ptuning').")
    ia3: IA3Spec = Field(default_factory=IA3Spec, description="IA3 (name 'ia3').")
    bottleneck: BottleneckSpec = Field(default_factory=BottleneckSpec,
                                       description="Bottleneck adapters (name 'bottleneck').")


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
    early_stopping_metric: str = Field(
        "val_loss", description="Metric that early stopping and the best checkpoint follow: 'val_loss', 'val_ppl', "
        "or a task metric of the validation split computed by generation ('accuracy', 'macro_f1', 'exact_match', "
        "'token_f1', 'json_valid', 'field_accuracy', 'rougeL', ...; see docs/training.md)."
    )
    early_stopping_mode: Literal["auto", "min", "max"] = Field(
        "auto", description="Whether lower or higher is better; 'auto': min for losses/perplexity, max otherwise."
    )
    eval_samples: int = Field(64, ge=1, description="Validation rows generated per evaluation for task metrics.")
    optimizer: Literal["adamw", "adafactor", "sgd", "adamw_8bit"] = Field(
        "adamw", description="AdamW; Adafactor (factored second moments, little memory); SGD with momentum; "
        "8-bit AdamW (bitsandbytes, CUDA only)."
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the token cross-entropy.")
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Set the model's own dropout probabilities (attention/hidden) for training; "
        "null keeps the model's values (0 for SmolLM2)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, ~30% more compute)."
    )
    save_every: int | None = Field(
        None, ge=1, description="Write a resumable checkpoint every N optimizer steps (null: only on SIGINT/SIGTERM)."
    )
    save_total_limit: int | None = Field(
        2, ge=0, description="Keep the newest K checkpoints (plus the best one); null keeps all."
    )
    resume: Literal["never", "auto"] = Field(
        "never", description="'auto': continue from the newest intact checkpoint of the run folder when there is one."
    )
    log_every: int = Field(5, ge=1, description="Write a metrics.jsonl row every N optimizer steps.")
    seed: int = Field(0, description="Seed for initialisation, data order and dropout.")
    batching: Literal["length_grouped", "packed", "padded"] = Field(
        "length_grouped",
        description="'length_grouped' batches similar lengths (little padding), 'packed' concatenates "
        "examples with per-document attention, 'padded' pads every batch to max_length (the slow baseline).",
    )
    objective: Literal["sft", "pretrain", "classify", "preference", "reward", "grpo", "rloo", "ppo"] = Field(
        "sft", description="What is learned (docs/objectives.md): 'sft' next-token loss on the assistant turns "
        "(all tokens for plain text); 'pretrain' next-token loss on plain text packed into blocks (perplexity "
        "evaluation); 'classify' a new sequence-classification head on the model (encoder or decoder), "
        "evaluated by accuracy and macro-F1; 'preference' DPO-family/ORPO/SimPO/KTO on preference data "
        "(the `preference` section; docs/preferences.md); 'reward' a reward model (scalar head, Bradley-Terry "
        "loss on pairs; pairwise accuracy on held-out pairs); 'grpo' / 'rloo' / 'ppo' online RL from prompts with "
        "the rewards of the `rl` section (PPO with a value head; docs/preferences.md)."
    )
    curriculum: Literal["none", "length", "score"] = Field(
        "none", description="Order of the first epoch: 'length' shortest rows first, 'score' lowest "
        "data.score_column first (easy to hard, in consecutive batches); later epochs are shuffled as usual."
    )
    sharding: Literal["none", "fsdp", "deepspeed"] = Field(
        "none", description="How a data-parallel run (--nproc N > 1) holds the model: 'none' every process keeps "
        "all weights, gradients and optimizer state (one gradient all-reduce per step); 'fsdp' shards them over "
        "the processes with PyTorch FSDP2 (one unit per decoder layer plus the rest), so each holds 1/N of them "
        "and all-gathers a layer only while it runs (sft/pretrain with full, freeze, lora or ia3; no effect with "
        "one process); 'deepspeed' partitions them with DeepSpeed ZeRO (train.deepspeed_zero_stage; sft/pretrain; "
        "needs --nproc 2 or more). All three give the same update (docs/training.md)."
    )
    fsdp_reshard_after_forward: bool = Field(
        True, description="train.sharding=fsdp: free each layer's gathered weights after its forward and gather "
        "them again for backward (least memory); false keeps them until backward (less communication)."
    )
    fsdp_mixed_precision: bool = Field(
        False, description="train.sharding=fsdp: all-gather and compute with bf16 copies of the weights, reduce "
        "gradients in fp32 into the fp32 shards (FSDP2 MixedPrecisionPolicy; half the all-gather traffic)."
    )
    fsdp_offload_params: bool = Field(
        False, description="train.sharding=fsdp on CUDA: keep parameter, gradient and optimizer shards in CPU "
        "memory and run the optimizer step there (FSDP2 CPUOffloadPolicy; far less GPU memory, slower)."
    )
    deepspeed_zero_stage: Literal[1, 2, 3] = Field(
        2, description="train.sharding=deepspeed: the ZeRO stage. 1 partitions the optimizer state over the "
        "processes, 2 also the gradients, 3 also the weights (each module's weights gathered while it runs)."
    )
    deepspeed_offload_optimizer: bool = Field(
        False, description="train.sharding=deepspeed on CUDA: keep the optimizer state (and fp32 master weights) "
        "in CPU memory and run the optimizer step there (ZeRO-Offload; less GPU memory, slower)."
    )
    deepspeed_offload_params: bool = Field(
        False, description="train.sharding=deepspeed with deepspeed_zero_stage=3 on CUDA: keep the weight "
        "partitions in CPU memory between uses (ZeRO-3 parameter offload)."
    )
    deepspeed_config: str | None = Field(
        None, description="train.sharding=deepspeed: path of a DeepSpeed JSON config merged over the generated one "
        "(bucket sizes, overlap_comm, ...). Keys tunelab sets from the recipe (batch sizes, accumulation, "
        "clipping, ZeRO stage, offload devices, bf16) must agree with it; optimizer, scheduler and fp16 are refused."
    )

    @model_validator(mode="after")
    def _deepspeed_keys(self) -> TrainSpec:
        # Checked at load for every objective: only the sft/pretrain loop reads these keys (the other recipes
        # would ignore them silently).
        if self.sharding == "deepspeed" and self.objective not in ("sft", "pretrain"):
            raise TunelabError(f"train.sharding=deepspeed is not supported with train.objective={self.objective} "
                               "(that recipe trains through TRL or its own loop, replicated only)",
                               where="train.sharding, train.objective",
                               fix="use train.sharding=none, or one of: sft, pretrain")
        defaults = {"deepspeed_zero_stage": 2, "deepspeed_offload_optimizer": False,
                    "deepspeed_offload_params": False, "deepspeed_config": None}
        for key, default in defaults.items():
            if self.sharding != "deepspeed" and getattr(self, key) != default:
                raise TunelabError(f"train.{key} is set but train.sharding is '{self.sharding}'",
                                   where=f"train.{key}, train.sharding",
                                   fix=f"set train.sharding=deepspeed, or remove train.{key}")
        return self


_COT_INSTRUCTION = "Think step by step, then give your final answer on the last line as 'Answer: X'."


class BaselinesSpec(_Spec):
    """Prompting baselines on the base model (tunelab.evaluation.icl; docs/evaluation.md)."""

    enabled: bool = Field(False, description="Evaluate the base model with prompting alone (zero-shot, k-shot, "
                          "chain-of-thought) on the same held-out rows as the fine-tune.")
    zero_shot: bool = Field(True, description="The evaluation prompt as is (reuses the base model's answers "
                            "when eval.compare_base already produced them).")
    few_shot: list[int] = Field([5], description="k-shot variants: k solved training examples as earlier "
                                "user/assistant turns of the chat ([] for none; e.g. [1, 5]).")
    selection: Literal["random", "similar"] = Field(
        "random", description="How shots are picked from the pool: 'random' (seeded, per test row) or "
        "'similar' (nearest by cosine of `encoder` sentence embeddings; the most similar shot comes last)."
    )
    encoder: str = Field("all-minilm-l6-v2", description="Sentence encoder for selection 'similar' (mean "
                         "pooling, L2 norm).")
    cot: bool = Field(True, description="Chain-of-thought variant: `cot_instruction` appended to the prompt, the "
                      "answer taken from the reasoning by answer extraction.")
    cot_instruction: str = Field(_COT_INSTRUCTION, description="Text appended to the last user turn for "
                                 "chain-of-thought.")
    cot_max_new_tokens: int = Field(256, ge=1, description="Generation budget of a chain-of-thought answer.")
    pool: Literal["train", "validation"] = Field(
        "train", description="Split the shots come from (never the evaluated split)."
    )
    pool_size: int | None = Field(None, ge=1, description="Use at most this many pool rows (first in split "
                                  "order); null: the whole split.")
    max_samples: int | None = Field(None, ge=1, description="Evaluate baselines on at most this many of the "
                                    "evaluated rows (null: all of them, as eval.max_samples).")
    seed: int = Field(0, description="Seed of random shot selection (same seed, same prompts).")

    @field_validator("few_shot", mode="before")
    @classmethod
    def _ks(cls, v: Any) -> Any:
        v = [v] if isinstance(v, int) and not isinstance(v, bool) else v
        if isinstance(v, list) and any(isinstance(k, int) and k < 1 for k in v):
            raise ValueError("every k must be at least 1 (zero-shot is `zero_shot: true`)")
        if isinstance(v, list) and len(set(v)) != len(v):
            raise ValueError(f"repeated k in {v}")
        return v


class GeneralSetSpec(_Spec):
    """One general-capability set for the learning-forgetting check (tunelab.evaluation.forgetting)."""

    name: str = Field(..., pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", description="Name in metrics.json and gate "
                      "rules (general.change.NAME.perplexity).")
    kind: Literal["perplexity", "instructions"] = Field(
        ..., description="'perplexity': sliding-window perplexity of a plain text file (one document per "
        "non-empty line); 'instructions': perplexity of the reference answers of an instruction file (any data "
        "format tunelab reads, plus self-instruct rows with `instances`), chat template applied."
    )
    path: str = Field(..., description="The file (e.g. ../shared/data/wikitext2_raw/wiki.test.raw).")
    max_samples: int | None = Field(200, ge=1, description="First N documents (lines) or instruction rows; "
                                    "null: all.")
    columns: dict[str, str] = Field(default_factory=dict, description="kind 'instructions': column mapping "
                                    "as data.columns.")
    max_length: int = Field(1024, ge=16, description="kind 'instructions': most tokens per row (prompt and "
                            "answer; the end of a longer answer is not scored). Text sets use eval.perplexity.")
    encoding: str = Field("utf-8", description="Text encoding of the file.")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v == "worst":
            raise ValueError("'worst' is reserved (general.worst.METRIC is the worst change over all sets)")
        return v


class BiasSpec(_Spec):
    """Bias probes: counterfactual input pairs and fill-in templates (tunelab.evaluation.bias)."""

    enabled: bool = Field(False, description="Probe base and tuned for bias (docs/evaluation.md, Bias probes); "
                          "results under `bias` in eval/metrics.json, pairs in eval/bias.jsonl.")
    inputs: bool = Field(True, description="Counterfactual pairs: evaluation prompts with one attribute's terms "
                         "swapped (he/she, names, nationalities ...), answered and scored on both sides.")
    templates: bool = Field(True, description="Fill-in templates ('The {person} worked as') scored by the "
                            "log-probability of each continuation, compared across the terms of each group.")
    templates_file: str | None = Field(None, description="A YAML/JSON probe file (swaps, groups, templates) that "
                                       "extends the built-in set; same-named attributes replace built-in ones.")
    builtin: bool = Field(True, description="Start from the built-in probe set (false: only `templates_file`).")
    attributes: list[str] | None = Field(None, description="Probe only these attributes (built-in: gender, "
                                         "ethnicity, nationality, religion, age); null: all.")
    max_samples: int | None = Field(50, ge=1, description="Counterfactual pairs per attribute (the first "
                                    "evaluated rows that mention a term); null: every such row.")

    @model_validator(mode="after")
    def _has_source(self) -> BiasSpec:
        if self.enabled and not self.builtin and self.templates_file is None:
            raise ValueError("builtin: false needs a templates_file (there would be nothing to probe)")
        return self


class EvalJudgeSpec(_Spec):
    """LLM-as-judge over the evaluated answers (tunelab.evaluation.judge)."""

    enabled: bool = Field(False, description="Judge the answers with an LLM (docs/evaluation.md, Judges); "
                          "results under `judge` in eval/metrics.json, verdicts in eval/judge.jsonl.")
    mode: Literal["pairwise", "single", "both"] = Field(
        "pairwise", description="'pairwise': tuned vs each other system (base, baselines), every pair judged in "
        "both orders, a verdict counts only when the two agree; 'single': every system graded alone on the "
        "rubric's scale; 'both'."
    )
    judge: JudgeSpec = Field(default_factory=JudgeSpec, description="The judge: a local model or an "
                             "OpenAI-compatible endpoint (greedy by default). The default 135M model is a weak "
                             "judge: use a bigger one where you can.")
    scoring: Literal["probs", "generate"] = Field(
        "probs", description="'probs': read the judge's next-token probabilities (grades: expected score "
        "over '1'..'5', G-Eval; pairwise: the most likely of 'A', 'B', 'C'=tie); 'generate': parse its reply."
    )
    scale: Literal[5, 10] = Field(5, description="Single grading scale 1..scale (10 needs scoring 'generate').")
    rubric: str | None = Field(None, description="Rubric text; null: the built-in rubric (helpfulness, "
                               "correctness, clarity, instruction following).")
    rubric_file: str | None = Field(None, description="Read the rubric from this text file (not with `rubric`).")
    reference: bool = Field(True, description="Show the judge the reference answer as a guide.")
    against: list[str] | None = Field(None, description="Systems the tuned model is compared with (pairwise) or "
                                      "that are graded besides it (single): 'base' and baseline names; null: "
                                      "all that were evaluated.")
    max_samples: int | None = Field(50, ge=1, description="Judge at most this many evaluated rows.")
    max_chars: int = Field(2000, ge=100, description="Characters of the prompt, reference and each answer shown "
                           "to the judge; longer ones are cut and marked as cut.")

    @model_validator(mode="after")
    def _consistent(self) -> EvalJudgeSpec:
        if self.rubric is not None and self.rubric_file is not None:
            raise ValueError("give either rubric or rubric_file, not both")
        if self.scale == 10 and self.scoring == "probs" and self.mode != "pairwise":
            raise ValueError("scale 10 needs scoring 'generate' ('10' is not one token, so its probability "
                             "cannot be read as the first token of the answer)")
        return self


class PerplexitySpec(_Spec):
    """Sliding-window perplexity (tunelab.evaluation.perplexity; the Transformers recipe)."""

    max_length: int | None = Field(1024, ge=2, description="Window length in tokens; null: the model's "
                                   "max_position_embeddings.")
    stride: int = Field(512, ge=1, description="Step between windows; max_length - stride tokens of each later "
                        "window are context only.")

    @model_validator(mode="after")
    def _stride_fits(self) -> PerplexitySpec:
        if self.max_length is not None and self.stride > self.max_length:
            raise ValueError(f"stride ({self.stride}) must not exceed max_length ({self.max_length})")
        return self


class BootstrapSpec(_Spec):
    """Percentile-bootstrap confidence intervals of the headline metrics."""

    n_resamples: int = Field(1000, ge=10, description="Resamples of the evaluated rows (with replacement).")
    confidence: float = Field(0.95, gt=0, lt=1, description="Coverage of the interval (0.95: 2.5th to 97.5th "
                              "percentile).")
    seed: int = Field(0, description="Seed of the resampling (same seed and rows, same interval).")


def _check_metric_names(names: list[str]) -> list[str]:
    from tunelab.evaluation.metrics import METRICS

    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; valid: {', '.join(sorted(METRICS))}")
    return names


class EvalSpec(_Spec):
    enabled: bool = Field(True, description="Evaluate after training (tunelab run) .")
    task: Literal["auto", "json", "label", "text", "choice", "perplexity"] = Field(
        "auto", description="'json'/'label'/'text': generated answers against the reference ('auto' picks from "
        "the references); 'choice': log-likelihood multiple choice over each row's `options` (or `choices`) "
        "with `answer` (index or text; default: the reference); 'perplexity': sliding-window perplexity of the "
        "rows' text (docs/evaluation.md, Task types)."
    )
    max_new_tokens: int = Field(128, ge=1, description="Generation budget per test example.")
    batch_size: int = Field(16, ge=1, description="Examples generated at once.")
    max_samples: int | None = Field(100, ge=1, description="Evaluate at most this many test examples.")
    compare_base: bool = Field(True, description="Also evaluate the base model on the same split.")
    labels: list[str] | None = Field(None, description="Label set for label tasks (default: from the data).")
    label_scoring: Literal["generate", "loglik"] = Field(
        "generate", description="Label tasks: 'generate' an answer and map it to a label, or 'loglik': score every "
        "label as the answer by log-likelihood (label probabilities, ROC-AUC; no generation)."
    )
    extract: str | None = Field(
        None, description="Answer extraction before scoring generated answers: a regular expression (its last "
        "match, group 1 if any, is the answer), 'auto' (\"the answer is X\", \"Answer: X\", last label or "
        "number, first JSON object) or null (the whole answer)."
    )
    perplexity: PerplexitySpec = Field(default_factory=PerplexitySpec, description="Window and stride of "
                                       "sliding-window perplexity (task 'perplexity', general sets).")
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec, description="Bootstrap confidence intervals "
                                     "of every headline metric.")
    metrics: list[str] = Field(default_factory=list, description="Extra metrics on generated answers (e.g. "
                               "[bleu, chrf, rouge1]); docs/evaluation.md lists them all.")
    baselines: BaselinesSpec = Field(default_factory=BaselinesSpec, description="Prompting baselines on the "
                                     "base model: zero-shot, k-shot, chain-of-thought (off by default).")
    general: list[GeneralSetSpec] = Field(
        default_factory=list, description="General-capability sets scored on base and tuned (learning vs "
        "forgetting): entries {name, kind: perplexity|instructions, path, max_samples, columns, max_length, encoding}. "
        "Empty (the default) skips the check; docs/evaluation.md suggests sets."
    )
    bias: BiasSpec = Field(default_factory=BiasSpec, description="Bias probes on base and tuned: counterfactual "
                           "input pairs and fill-in templates (off by default).")
    judge: EvalJudgeSpec = Field(default_factory=EvalJudgeSpec, description="LLM-as-judge: pairwise with "
                                 "position swapping and/or single-answer grades (off by default).")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        return _check_metric_names(v)

    @field_validator("extract")
    @classmethod
    def _valid_pattern(cls, v: str | None) -> str | None:
        if v not in (None, "auto"):
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression ({e})") from None
        return v

    @field_validator("general")
    @classmethod
    def _unique_sets(cls, v: list[GeneralSetSpec]) -> list[GeneralSetSpec]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"general set names must differ: {names}")
        return v


class OutputSpec(_Spec):
    dir: str = Field("runs", description="Folder that holds run folders.")
    name: str | None = Field(None, description="Run folder name (default: recipe name and a timestamp).")
    overwrite: bool = Field(False, description="Replace an existing run folder of the same name.")
    tracking: list[Literal["mlflow", "tensorboard"]] = Field(
        ["mlflow"], description="Experiment trackers fed live with params, metrics, system metrics, artefacts and data "
        "fingerprints; [] for none (env TUNELAB_TRACKING=none also turns them off)."
    )
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI (a server URL or a database); default: SQLite at <dir>/mlflow.db."
    )
    experiment: str | None = Field(None, description="MLflow experiment name (default: the recipe name).")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or "\\" in v or v in {".", ".."}):
            raise ValueError("must be a plain folder name (no '/', '\\', '.' or '..')")
        return v


class ParamSpec(_Spec):
    type: Literal["float", "log_float", "int", "categorical"] = Field(..., description="Kind of search dimension.")
    low: float | None = Field(None, description="Lower bound (float, log_float, int).")
    high: float | None = Field(None, description="Upper bound (float, log_float, int).")
    step: float | None = Field(None, gt=0, description="Grid step for float/int (required by the grid strategy for them).")
    choices: list[Any] | None = Field(None, description="Values of a categorical dimension.")
    when: str | None = Field(
        None, description="Condition on other parameters, e.g. \"method.name == 'lora'\": the dimension exists only "
        "when it holds (conditional search space)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if self.low >= self.high:
            raise ValueError(f"empty or inverted range: low {self.low} >= high {self.high}")
        if self.type == "log_float" and self.low <= 0:
            raise ValueError("log_float needs low > 0")
        return self


class SweepSpec(_Spec):
    space: dict[str, ParamSpec] = Field(..., description="Search space: dotted recipe key -> dimension.")
    strategy: Literal["grid", "random", "tpe", "cmaes"] = Field(
        "tpe", description="Sampler: full grid, random, TPE (Bayesian), or CMA-ES (continuous spaces)."
    )
    pruner: Literal["none", "median", "asha", "hyperband"] = Field(
        "asha", description="Stop bad trials early from their intermediate validation metrics."
    )
    metric: str = Field("val_loss", description="Objective: a validation metric (same names as "
                        "train.early_stopping_metric: val_loss, val_ppl, accuracy, macro_f1, field_accuracy, ...).")
    direction: Literal["auto", "minimize", "maximize"] = Field(
        "auto", description="'auto': minimise losses/perplexity, maximise everything else."
    )
    trials: int | None = Field(20, ge=1, description="Finished trials to run (complete + pruned + failed).")
    max_time_s: float | None = Field(None, gt=0, description="Stop starting new trials after this wall time.")
    max_tokens: int | None = Field(None, ge=1, description="Training tokens the whole study may spend (all "
                                   "workers): the trial that reaches them stops there (pruned) and no new one starts.")
    storage: str | None = Field(
        None, description="Optuna storage URL (e.g. postgresql://user@host/db for several machines); default: SQLite "
        "in the study folder."
    )
    study_name: str | None = Field(None, description="Study name (default: the recipe name).")
    seed: int = Field(0, description="Sampler seed.")
    min_resource: int = Field(2, ge=1, description="Pruners: evaluations a trial gets before it can be pruned (2: "
                              "early rankings of short fine-tunes often flip later; see docs/sweep.md).")
    reduction_factor: int = Field(3, ge=2, description="ASHA/Hyperband: a trial goes on past a rung if it is in the "
                                  "best 1/reduction_factor there; rungs at min_resource x reduction_factor^k "
                                  "evaluations.")


REFERENCE_FREE_LOSSES = ("orpo", "simpo", "cpo")  # objectives with no reference model


class PreferenceSpec(_Spec):
    loss: Literal["sigmoid", "ipo", "hinge", "orpo", "simpo", "cpo", "kto"] = Field(
        "sigmoid", description="'sigmoid' DPO, 'ipo' IPO, 'hinge' SLiC-style DPO (TRL DPOTrainer); 'orpo' "
        "odds-ratio preference + SFT loss, no reference (ORPOTrainer); 'simpo' length-normalised, no reference "
        "(CPOTrainer, cpo_alpha 0); 'cpo' contrastive preference + SFT loss (CPOTrainer); 'kto' unpaired "
        "good/bad labels (KTOTrainer; pairs are split into one good and one bad row)."
    )
    beta: float = Field(0.1, gt=0, description="Strength of the preference term: DPO/IPO/KTO deviation from the "
                        "reference (higher = closer); ORPO's lambda; SimPO/CPO's reward scale (SimPO paper: 2.0).")
    reference: Literal["auto", "peft", "precompute", "copy", "none"] = Field(
        "auto", description="Reference policy for sigmoid/ipo/hinge/kto: 'peft' the frozen initial adapter "
        "(LoRA default init = the base model; no second model), 'precompute' reference log-probs of every pair "
        "computed once before training (any method, no reference forward per step), 'copy' a second frozen model "
        "(model.name or reference_model); 'auto': peft for PEFT methods, precompute for full/freeze; 'none' for "
        "the reference-free losses (orpo, simpo, cpo)."
    )
    reference_model: str | None = Field(
        None, description="With reference=copy: another model as the reference (alias, folder or run folder, e.g. "
        "the SFT run this DPO starts from); its tokenizer must match model.name's."
    )
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target reward margin (loss 'simpo').")
    cpo_alpha: float = Field(1.0, ge=0, description="Weight of the SFT (NLL) term of loss 'cpo'.")
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of good rows (raise it when bad rows "
                                    "outnumber good ones).")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of bad rows.")

    @model_validator(mode="after")
    def _reference(self) -> PreferenceSpec:
        free = self.loss in REFERENCE_FREE_LOSSES
        if free and self.reference not in ("auto", "none"):
            raise TunelabError(f"preference.loss={self.loss} uses no reference model, but preference.reference="
                               f"{self.reference}", where="preference.reference",
                               fix="remove preference.reference (or set it to none), or use loss sigmoid/ipo/hinge")
        if not free and self.reference == "none":
            raise TunelabError(f"preference.loss={self.loss} needs a reference policy", where="preference.reference",
                               fix="use auto, peft, precompute or copy; or loss orpo/simpo/cpo without one")
        if self.reference_model and self.reference != "copy":
            raise TunelabError("preference.reference_model is used only with preference.reference=copy",
                               where="preference.reference_model", fix="set preference.reference=copy")
        return self


RewardType = Literal["json_valid", "json_schema", "json_fields", "exact_match", "regex", "length_penalty", "model",
                     "callable"]
# Which parameter each reward type needs; a parameter given to a type that does not read it is an error.
_REWARD_PARAMS = {"json_schema": ("json_schema",), "regex": ("pattern",), "length_penalty": ("target",),
                  "model": ("model",), "callable": ("function",)}
_REWARD_OPTIONAL = {"json_schema": ("partial",), "json_fields": ("column",), "exact_match": ("column",)}


class RewardSpec(_Spec):
    """One reward of ``rl.rewards`` (tunelab.rewards; docs/preferences.md)."""

    type: RewardType = Field(
        ..., description="'json_valid' (1 when the completion is a JSON object), 'json_schema' (checked against "
        "`json_schema`), 'json_fields' (share of the reference JSON's fields right), 'exact_match' (normalised "
        "equality with the reference), 'regex' (`pattern` found), 'length_penalty' (0 up to `target` "
        "characters, down to -1 at twice that), 'model' (a reward model scores prompt + completion), "
        "'callable' (`function`: module:function or file.py:function)."
    )
    weight: float = Field(1.0, description="Weight of this reward in the total (rewards are summed).")
    name: str | None = Field(None, description="Name in the logs (metrics.jsonl `reward/<name>`); default: "
                             "the type, or the function's name.")
    json_schema: dict[str, Any] | str | None = Field(
        None, description="json_schema: the JSON schema, inline or the path of a .json file "
        "(tunelab checks a subset of JSON Schema and refuses other keywords; docs/preferences.md)."
    )
    partial: bool = Field(True, description="json_schema: score the share of schema checks passed (true) or "
                          "1 only for a fully valid object (false).")
    pattern: str | None = Field(None, description="regex: regular expression searched in the completion (DOTALL).")
    target: int | None = Field(None, ge=1, description="length_penalty: characters allowed before the penalty.")
    column: str | None = Field(None, description="exact_match / json_fields: raw column holding the reference "
                               "(default: the row's final assistant answer).")
    model: str | None = Field(None, description="model: a `train.objective=reward` run folder, or a "
                              "sequence-classification model folder with one output.")
    function: str | None = Field(None, description="callable: 'module:function' or 'path/to/file.py:function', "
                                 "taking keyword arguments among completions, prompts, references, rows.")

    @model_validator(mode="after")
    def _params(self) -> RewardSpec:
        needed = _REWARD_PARAMS.get(self.type, ())
        for key in needed:
            if getattr(self, key) is None:
                raise ValueError(f"reward type '{self.type}' needs '{key}'")
        allowed = set(needed) | set(_REWARD_OPTIONAL.get(self.type, ())) | {"type", "weight", "name"}
        for key in ("json_schema", "pattern", "target", "column", "model", "function"):
            if key not in allowed and getattr(self, key) is not None:
                raise ValueError(f"'{key}' is not read by reward type '{self.type}'")
        if self.type != "json_schema" and not self.partial:
            raise ValueError(f"'partial' is read only by reward type 'json_schema', not '{self.type}'")
        return self


class PPOSpec(_Spec):
    """PPO (``train.objective: ppo``): the value head, GAE and the update passes (docs/preferences.md, PPO)."""

    epochs: int = Field(4, ge=1, description="Optimisation passes over each rollout (PPO epochs).")
    minibatch_size: int | None = Field(
        None, ge=1, description="Completions per optimizer update within a pass (null: the whole rollout, "
        "train.batch_size x train.grad_accum); must divide the rollout. Forward passes take train.batch_size "
        "completions at a time."
    )
    gamma: float = Field(1.0, ge=0, le=1, description="Discount over completion tokens in GAE.")
    lam: float = Field(1.0, ge=0, le=1, description="GAE lambda (1: Monte Carlo return minus the value; 0: "
                       "one-step temporal difference). 1 by default because the value head starts at zero: below 1 "
                       "the first tokens get almost no credit until it has learnt (docs/preferences.md).")
    cliprange_value: float = Field(0.2, gt=0, description="The value prediction moves at most this far from "
                                   "its rollout estimate per update (clipped value loss).")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss in the total loss.")
    kl_target: float | None = Field(
        None, gt=0, description="Adaptive KL control (Ziegler et al. 2019): the KL per completion to aim at; "
        "rl.beta is then only the starting coefficient (null: rl.beta stays fixed)."
    )
    kl_horizon: int = Field(10000, ge=1, description="Adaptive KL control: completions over which the "
                            "coefficient's correction is spread.")
    missing_eos_penalty: float | None = Field(
        None, ge=0, description="Subtracted from the score of a completion that hits rl.max_completion_length "
        "without ending (null: off)."
    )


class RLSpec(_Spec):
    """Online RL (``train.objective: grpo | rloo | ppo``): rewards, KL control, sampling."""

    rewards: list[RewardSpec] = Field(
        default_factory=list, description="The rewards, summed with their weights: entries {type, weight, name, "
        "json_schema, partial, pattern, target, column, model, function} (see RewardSpec in docs/preferences.md)."
    )
    beta: float = Field(0.04, ge=0, description="KL coefficient against the reference policy (0: no reference "
                        "forward, no KL control). GRPO adds beta*KL to the loss, RLOO subtracts it from the reward, "
                        "PPO from every token's reward (the start value when rl.ppo.kl_target is set).")
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the group whose mean "
                                 "reward is the baseline); GRPO/RLOO only (PPO samples one per prompt).")
    max_completion_length: int = Field(64, ge=1, description="Generation budget per completion (tokens).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest token set with this "
                         "probability mass (1: off).")
    top_k: int = Field(0, ge=0, description="Sample from the k most likely tokens only (0: off).")
    epsilon: float = Field(0.2, gt=0, description="Clipping range of the probability ratio (PPO-style).")
    num_iterations: int = Field(1, ge=1, description="Optimisation passes over each batch of completions "
                                "(GRPO/RLOO; PPO: rl.ppo.epochs).")
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field(
        "dapo", description="GRPO loss aggregation (TRL): 'dapo' tokens of the whole batch, 'grpo' per-sequence "
        "mean, 'dr_grpo' a constant, 'bnpo' tokens of the micro-batch. RLOO and PPO ignore it."
    )
    reference_model: str | None = Field(
        None, description="Reference policy for the KL term: null = the policy's starting weights (the PEFT "
        "base, no second model for LoRA-family methods); or another model (alias, folder, run folder) with the "
        "same tokenizer."
    )
    eval_prompts: int = Field(32, ge=0, description="Held-out prompts (validation split) answered greedily "
                              "before and after training; their mean reward is logged (0: skip).")
    ppo: PPOSpec = Field(default_factory=PPOSpec, description="PPO only (train.objective=ppo): value head, GAE, "
                         "update passes, adaptive KL.")

    @model_validator(mode="after")
    def _kl(self) -> RLSpec:
        if self.reference_model and self.beta == 0:
            raise ValueError("reference_model is used only for the KL term, but beta is 0")
        if self.ppo.kl_target is not None and self.beta == 0:
            raise ValueError("ppo.kl_target adapts beta multiplicatively, and beta 0 would stay 0")
        return self


class RewardModelSpec(_Spec):
    """Reward-model training (``train.objective: reward``)."""

    center_coefficient: float | None = Field(
        0.01, ge=0, description="Weight of the penalty on (r_chosen + r_rejected)^2 that keeps rewards centred "
        "on 0 (as TRL's RewardTrainer; null: off). Centred rewards suit RL, where the reward is a baseline-free "
        "signal."
    )


class ServeSpec(_Spec):
    """`tunelab serve`: the OpenAI-compatible server (see docs/serving.md)."""

    model: str | None = Field(
        None, description="What to serve: builtin alias, local model folder (e.g. a `tunelab merge` export), run "
        "folder (its adapter on its base, or its full weights) or cached hub id; `tunelab serve MODEL` sets it."
    )
    adapters: dict[str, str] = Field(
        default_factory=dict, description="More LoRA-family adapters on the same base, served at once: "
        "{name: run folder}; a request picks one with `model: name`."
    )
    embedding_model: str | None = Field(
        None, description="Encoder for /v1/embeddings (e.g. all-minilm-l6-v2; mean-pooled, L2-normalised); "
        "null leaves the route answering 400."
    )
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="Generation backend: 'transformers' (CPU or GPU, dynamic batching with KV "
        "cache) or 'vllm' (CUDA GPUs; pip install vllm)."
    )
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 exposes the server to the network.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Weights dtype: 'auto' is bf16 on a GPU or a CPU with native bf16, else fp32."
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice).")
    batch_size: int = Field(16, ge=1, le=512, description="Most sequences decoded together, over all models.")
    queue_size: int = Field(64, ge=0, description="Most requests waiting for a batch slot; more are answered "
                            "503 with Retry-After.")
    queue_timeout_s: float = Field(60.0, gt=0, description="A request that waits longer than this for a batch "
                                   "slot is answered 503.")
    request_timeout_s: float = Field(600.0, gt=0, description="Longest generation per request; then it is "
                                     "cancelled and answered 504.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body; larger ones get 413.")
    max_header_bytes: int = Field(16_384, ge=1024, description="Largest total size of request headers; larger "
                                  "get 431.")
    max_n: int = Field(8, ge=1, le=128, description="Most choices per request (`n` times the number of prompts).")
    max_stop: int = Field(4, ge=0, le=4, description="Most stop sequences per request.")
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Longest prompt in tokens (default: the model's context minus one)."
    )
    max_tokens: int = Field(4096, ge=1, description="Largest `max_tokens` a request may ask for (it is also "
                            "bounded by the context left after the prompt).")
    default_max_tokens: int = Field(512, ge=1, description="`max_tokens` when a request gives none (bounded by "
                                    "the context left after the prompt).")
    max_embedding_inputs: int = Field(256, ge=1, description="Most input texts per /v1/embeddings request.")
    public_paths: list[str] = Field(
        default_factory=lambda: ["/health"], description="Paths answered without an API key; every other path "
        "needs `Authorization: Bearer KEY`."
    )
    state_dir: str = Field("serve-state", description="Folder for the server's records (feedback JSONL).")
    recent_responses: int = Field(
        4096, ge=0, description="Responses remembered (prompt and answer) so /v1/feedback can refer to them by id."
    )
    database: str | None = Field(
        None, description="SQLAlchemy URL of the database for API keys, quotas, the audit log and feedback "
        "(sqlite:///PATH or postgresql+psycopg://USER@HOST/DB). Null: $TUNELAB_DATABASE_URL, else "
        "STATE_DIR/serve.db when it exists (`tunelab keys create` makes it), else a static key and JSONL feedback."
    )
    access_log: bool = Field(True, description="Log one JSON line per request (logger tunelab.access): request "
                             "id, key id, model, tokens, latency, status. No prompt text unless log_prompts.")
    log_prompts: bool = Field(False, description="Also record prompt and answer text in the access log and "
                              "audit table, PII-redacted (emails, phones, keys... become <TYPE>).")
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed to call the API (CORS), e.g. "
        "['https://app.example.com']; empty (the default) sends no CORS headers."
    )
    shutdown_grace_s: float = Field(20.0, gt=0, le=300, description="On SIGTERM: how long requests in flight "
                                    "may finish before they are cancelled with a clean error.")
    body_timeout_s: float = Field(30.0, gt=0, description="A request body not fully received this long after "
                                  "the request started is answered 408.")

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        bad = [o for o in v if o != "*" and not o.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"origins are scheme://host[:port] (or '*'): {bad}")
        return v

    @field_validator("public_paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not p.startswith("/")]
        if bad:
            raise ValueError(f"paths must start with '/': {bad}")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> ServeSpec:
        if self.default_max_tokens > self.max_tokens:
            raise TunelabError(f"serve.default_max_tokens ({self.default_max_tokens}) exceeds serve.max_tokens "
                               f"({self.max_tokens})", where="serve.default_max_tokens",
                               fix="lower serve.default_max_tokens or raise serve.max_tokens")
        return self


class DeploySpec(_Spec):
    """What `tunelab run` does once the gate has decided (docs/evaluation.md, Gate and deployment)."""

    merge: bool = Field(
        False, description="When the gate passes (or the recipe has none): merge the adapter into a standalone "
        "Transformers folder (`tunelab merge`, with its logit parity check); full/freeze weights are re-saved as is. "
        "Prompt-learning and bottleneck methods cannot be merged."
    )
    merge_dir: str | None = Field(None, description="Where the merged model goes (default: RUN/merged).")
    merge_dtype: Literal["fp32", "bf16"] = Field("fp32", description="Weight dtype of the merged folder.")
    serve: bool = Field(
        False, description="When the gate passes (or the recipe has none): serve the run (the merged folder when "
        "deploy.merge is on) with the recipe's serve: settings until interrupted. A blocked gate skips it and "
        "`tunelab run` exits 3."
    )

    @model_validator(mode="after")
    def _dir(self) -> DeploySpec:
        if self.merge_dir is not None and not self.merge:
            raise ValueError("merge_dir is set but merge is false")
        return self


class Recipe(_Spec):
    data: DataSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    method: MethodSpec = Field(default_factory=MethodSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    sweep: SweepSpec | None = Field(None, description="Hyperparameter search (`tunelab sweep`).")
    preference: PreferenceSpec = Field(default_factory=PreferenceSpec, description="Preference objective "
                                       "(train.objective=preference): loss, beta, reference policy.")
    rl: RLSpec = Field(default_factory=RLSpec, description="Online RL (train.objective=grpo, rloo or ppo): rewards, "
                       "KL coefficient, sampling settings.")
    reward_model: RewardModelSpec = Field(default_factory=RewardModelSpec, description="Reward-model training "
                                          "(train.objective=reward).")
    serve: ServeSpec = Field(default_factory=ServeSpec, description="`tunelab serve`: the OpenAI-compatible "
                             "server (docs/serving.md).")
    gate: list[str] = Field(
        default_factory=list, description="Deployment gate: rules over eval/metrics.json that must all hold, "
        "e.g. ['tuned.macro_f1 >= 0.8', 'general.worst.perplexity <= 5%']; `tunelab run` exits 3 when one "
        "fails (grammar in docs/evaluation.md, Gate)."
    )
    deploy: DeploySpec = Field(default_factory=DeploySpec, description="After the gate: merge and/or serve "
                               "the run when it passes; skipped (and recorded) when it blocks.")

    @field_validator("gate", mode="before")
    @classmethod
    def _gate_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else ([] if v is None else v)

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        s = self.data.split
        if s.validation + s.test >= 0.9:
            raise ValueError("data.split.validation + data.split.test must leave at least 10% for training")
        return self

    @model_validator(mode="after")
    def _gate_rules(self) -> Recipe:
        e, objective = self.eval, self.train.objective
        parts = [k for k, on in (("eval.baselines.enabled", e.baselines.enabled), ("eval.general", e.general)) if on]
        # Classifier heads, reward models and preference pairs have their own evaluations (no generation).
        if parts and objective in ("classify", "reward", "preference"):
            raise TunelabError(f"{' and '.join(parts)} evaluate generative models, but train.objective={objective} "
                               "has its own evaluation", where=parts[0], fix=f"remove {' and '.join(parts)}")
        if e.baselines.enabled and objective == "pretrain":
            raise TunelabError("prompting baselines need prompts with answers; continued pretraining evaluates "
                               "perplexity on raw text", where="eval.baselines.enabled",
                               fix="set eval.baselines.enabled=false (eval.general works for pretraining)")
        if self.deploy.merge or self.deploy.serve:
            from tunelab.deploy import check_deploy

            check_deploy(self)
        if not self.gate:
            return self
        from tunelab.evaluation.gate import check_recipe_gate

        check_recipe_gate(self)
        return self

    @model_validator(mode="after")
    def _objective(self) -> Recipe:
        d, t = self.data, self.train
        if d.packing == "auto":
            d.packing = "blocks" if t.objective == "pretrain" else "none"
        if t.objective == "pretrain" and d.packing != "blocks":
            raise TunelabError("train.objective=pretrain packs documents into blocks", where="data.packing",
                               fix="use data.packing=blocks, or train.objective=sft to train on each text row alone")
        if t.objective == "classify" and d.packing == "blocks":
            raise TunelabError("a classifier reads one row at a time; blocks of joined documents have no label",
                               where="train.objective, data.packing", fix="use data.packing=none")
        if t.curriculum == "score" and not d.score_column:
            raise TunelabError("train.curriculum=score needs the column holding the scores",
                               where="train.curriculum, data.score_column", fix="set data.score_column=COLUMN")
        if t.curriculum != "none" and d.packing == "blocks":
            raise TunelabError("a curriculum orders rows, but data.packing=blocks cuts them into equal blocks",
                               where="train.curriculum, data.packing", fix="use train.curriculum=none")
        return self

    @model_validator(mode="after")
    def _preference_data(self) -> Recipe:
        preference_format = self.data.format in ("pairs", "sharegpt_pairs", "hh", "unpaired")
        if preference_format and self.train.objective not in ("preference", "reward"):
            raise TunelabError(f"data.format={self.data.format} is preference data, but train.objective="
                               f"{self.train.objective}", where="data.format, train.objective",
                               fix="set train.objective=preference, or a chat/text data.format")
        if self.train.objective == "reward" and self.data.format == "unpaired":
            raise TunelabError("a reward model learns from pairs (chosen vs rejected), not unpaired labels",
                               where="data.format, train.objective",
                               fix="use a file of pairs, or train.objective=preference with preference.loss=kto")
        if self.train.objective in ("preference", "reward") and self.data.packing == "blocks":
            raise TunelabError("preference pairs cannot be packed into blocks", where="data.packing",
                               fix="use data.packing=none")
        return self

    @model_validator(mode="after")
    def _online_rl(self) -> Recipe:
        t, rl = self.train, self.rl
        if t.objective not in ("grpo", "rloo", "ppo"):
            return self
        if not rl.rewards:
            raise TunelabError(f"train.objective={t.objective} needs at least one reward", where="rl.rewards",
                               fix="add e.g. rl.rewards: [{type: json_valid}] (docs/preferences.md)")
        if t.objective == "ppo" and rl.ppo.minibatch_size and (t.batch_size * t.grad_accum) % rl.ppo.minibatch_size:
            raise TunelabError(f"rl.ppo.minibatch_size ({rl.ppo.minibatch_size}) does not divide the rollout "
                               f"(train.batch_size x train.grad_accum = {t.batch_size * t.grad_accum} completions)",
                               where="rl.ppo.minibatch_size", fix="use a divisor of the rollout, or null for one "
                               "update per pass over it")
        if t.objective != "ppo" and (t.batch_size * t.grad_accum) % rl.num_generations:
            raise TunelabError(f"train.batch_size x train.grad_accum ({t.batch_size * t.grad_accum} completions per "
                               f"step) is not a multiple of rl.num_generations ({rl.num_generations})",
                               where="train.batch_size, rl.num_generations",
                               fix="make completions per step a multiple of the group size, e.g. batch_size=8 "
                               "with num_generations=4")
        if self.data.packing == "blocks":
            raise TunelabError("online RL samples answers to prompts; blocks of joined text have no prompt",
                               where="data.packing", fix="use data.packing=none")
        return self
