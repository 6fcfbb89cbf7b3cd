"""What the server serves: model ids, their tokenizers, chat templates, stop tokens and context lengths.

The catalog is engine-agnostic and holds no weights: it is built (quickly, tokenizers and configs only)
before the server starts, so a wrong path or an adapter trained on another base is a one-line error at
the command line. Engines read it to load weights their own way.

Ids: a builtin alias or hub id is served under its name, a local folder under its folder name, a run
folder's adapter under the run folder's name (or the NAME of `--adapter NAME=RUN_DIR`), beside its base.
A run folder's tokenizer (its `tokenizer/` folder, saved at training time) supplies the chat template,
EOS and end-of-turn tokens for that id, so serving renders prompts exactly as training did.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunelab.config.specs import ServeSpec
from tunelab.errors import TunelabError

__all__ = ["ModelCatalog", "ServedModel", "build_catalog"]

_ID = re.compile(r"^[A-Za-z0-9][\w.:/-]{0,127}$")
_DEFAULT_CONTEXT = 2048


@dataclass
class ServedModel:
    """One id clients can put in `model`.

    Attributes:
        id: the served name.
        kind: 'chat' (text generation) or 'embedding'.
        weights: name or folder of the weights to load (builtin alias, folder, hub id); adapters share their
            base's value, which is how engines know to stack them on one set of weights.
        adapter_dir: the PEFT adapter folder for adapter ids, else None.
        tokenizer: the tokenizer with the chat template used in training.
        stop_token_ids: EOS, the template's end-of-turn token and the generation config's EOS ids.
        context_length: most tokens (prompt + output) the model takes.
        source: a short human description for logs and /v1/models.
    """

    id: str
    kind: Literal["chat", "embedding"]
    weights: str
    tokenizer: Any
    context_length: int
    adapter_dir: Path | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    source: str = ""
    trust_remote_code: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    _json_vocab: Any = None

    def json_vocab(self, vocab_size: int):
        """Token texts for JSON mode, built once on first use (a batch decode of the vocabulary)."""
        from tunelab.serving.engines.jsonmode import JsonVocab

        if self._json_vocab is None or len(self._json_vocab.texts) != vocab_size:
            self._json_vocab = JsonVocab(self.tokenizer, vocab_size)
        return self._json_vocab


@dataclass
class ModelCatalog:
    """The served models by id, in the order they were listed (the first chat model is the default)."""

    models: dict[str, ServedModel]

    def get(self, model_id: str) -> ServedModel | None:
        return self.models.get(model_id)

    def chat_ids(self) -> list[str]:
        return [m.id for m in self.models.values() if m.kind == "chat"]

    def embedding_ids(self) -> list[str]:
        return [m.id for m in self.models.values() if m.kind == "embedding"]

    @property
    def default_chat(self) -> str:
        return self.chat_ids()[0]


def _context_length(path: Path, tokenizer) -> int:
    import json

    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = {}
    n = next((cfg[k] for k in ("max_position_embeddings", "n_positions", "max_seq_len") if cfg.get(k)), None)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 10**7:  # tokenizers without a limit report ~1e30
        n = min(n, tok_max) if n else tok_max
    return int(n or _DEFAULT_CONTEXT)


def _stop_ids(tokenizer, weights_dir: Path) -> list[int]:
    from tunelab.evaluation.generate import stop_token_ids

    ids = set(stop_token_ids(tokenizer))
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(weights_dir).eos_token_id
    except (OSError, ValueError):
        eos = None
    ids.update(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
    return sorted(ids)


def _run_tokenizer(run: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise TunelabError(f"run folder '{run}' has a tokenizer without a chat template", where=str(run / "tokenizer"),
                           fix="re-train with a chat model, or serve a model folder whose tokenizer has one")
    return tok


def _display_id(name: str) -> str:
    from tunelab.models.registry import BUILTINS

    p = Path(name).expanduser()
    return name if name in BUILTINS or not p.is_dir() else p.resolve().name


def _base_model(name: str, trust_remote_code: bool = False) -> ServedModel:
    from tunelab.models import load_tokenizer, resolve_model

    resolved = resolve_model(name)
    if resolved.kind != "causal-lm":
        raise TunelabError(f"'{name}' is not a text-generation model (kind: {resolved.kind})", where="MODEL",
                           fix="serve a causal LM; pass encoders with --embedding-model")
    tok = load_tokenizer(name, trust_remote_code)
    return ServedModel(_display_id(name), "chat", name, tok, _context_length(resolved.path, tok),
                       stop_token_ids=_stop_ids(tok, resolved.path), source=f"{resolved.source} model {name}",
                       trust_remote_code=trust_remote_code)


def _run_recipe(run: Path):
    from tunelab.config.loading import load_recipe
    from tunelab.models import is_run_dir

    if not is_run_dir(run):
        raise TunelabError(f"'{run}' is not a finished tunelab run folder (needs config.yaml and adapter/ or model/)",
                           where="--adapter", fix="pass a folder created by `tunelab train`")
    return load_recipe(run / "config.yaml")


def _adapter(name: str, run: Path, base: ServedModel) -> ServedModel:
    from tunelab.models import resolve_model
    from tunelab.models.loading import _full_weights_dir

    recipe = _run_recipe(run)
    if _full_weights_dir(run) is not None:
        raise TunelabError(f"run '{run}' holds full weights, not an adapter", where=f"--adapter {name}",
                           fix=f"serve it on its own: tunelab serve {run}")
    from tunelab.methods.peft_methods import PROMPT_LEARNING

    if recipe.method.name in PROMPT_LEARNING:
        raise TunelabError(f"run '{run}' uses {recipe.method.name}, whose virtual tokens the batching engine "
                           "cannot serve", where=f"--adapter {name}",
                           fix=f"chat with it through `tunelab chat {run}`, or train a LoRA-family adapter")
    trained_on = resolve_model(recipe.model.name).path.resolve()
    served = resolve_model(base.weights).path.resolve()
    if trained_on != served:
        raise TunelabError(f"adapter '{name}' was trained on '{recipe.model.name}', but the served base is "
                           f"'{base.weights}'", where=f"--adapter {name}={run}",
                           fix="serve adapters that share one base model (or merge them with `tunelab merge`)")
    tok = _run_tokenizer(run)
    return ServedModel(name, "chat", base.weights, tok, base.context_length, adapter_dir=run / "adapter",
                       stop_token_ids=_stop_ids(tok, served), source=f"{recipe.method.name} adapter {run} "
                       f"on {recipe.model.name}", trust_remote_code=base.trust_remote_code)


def _from_run(run: Path) -> list[ServedModel]:
    """A run folder: its full weights, or its base plus its adapter (named after the folder)."""
    from tunelab.models.loading import _full_weights_dir

    recipe = _run_recipe(run)
    weights = _full_weights_dir(run)
    if weights is not None:
        tok = _run_tokenizer(run)
        return [ServedModel(run.resolve().name, "chat", str(weights), tok, _context_length(weights, tok),
                            stop_token_ids=_stop_ids(tok, weights), source=f"full weights of run {run}",
                            trust_remote_code=recipe.model.trust_remote_code)]
    base = _base_model(recipe.model.name, recipe.model.trust_remote_code)
    return [base, _adapter(run.resolve().name, run, base)]


def _embedding(name: str) -> ServedModel:
    from transformers import AutoTokenizer

    from tunelab.models import resolve_model

    resolved = resolve_model(name)
    if resolved.kind != "encoder":
        raise TunelabError(f"'{name}' is not an encoder model (kind: {resolved.kind})", where="--embedding-model",
                           fix="use an encoder such as all-minilm-l6-v2")
    tok = AutoTokenizer.from_pretrained(resolved.path)
    return ServedModel(_display_id(name), "embedding", name, tok, _context_length(resolved.path, tok),
                       source=f"{resolved.source} encoder {name}")


def _check_ids(models: list[ServedModel]) -> dict[str, ServedModel]:
    out: dict[str, ServedModel] = {}
    for m in models:
        if not _ID.match(m.id):
            raise TunelabError(f"model id '{m.id}' is not a safe name", where="--adapter",
                               fix="use letters, digits and . _ - : / (at most 128 characters)")
        if m.id in out:
            raise TunelabError(f"two served models are both named '{m.id}'", where="--adapter",
                               fix="give each adapter its own name: --adapter NAME=RUN_DIR")
        out[m.id] = m
    return out


def _check_bottleneck_alone(models: list[ServedModel]) -> None:
    """A bottleneck adapter switches hooks on its base, so it is served only as the one adapter of that base."""
    from tunelab.methods.bottleneck import is_bottleneck_dir

    adapters = [m for m in models if m.adapter_dir is not None]
    odd = [m for m in adapters if is_bottleneck_dir(m.adapter_dir)]
    if odd and len(adapters) > 1:
        raise TunelabError(f"adapter '{odd[0].id}' uses method 'bottleneck', which is served only as the one adapter "
                           f"of its base (also asked for: {', '.join(m.id for m in adapters if m is not odd[0])})",
                           where="--adapter", fix="serve the bottleneck run on its own (tunelab serve RUN), or "
                           "train LoRA-family adapters to serve several at once")


def build_catalog(spec: ServeSpec) -> ModelCatalog:
    """Resolve `spec.model`, `spec.adapters` and `spec.embedding_model` into a catalog (no weights loaded).

    Raises:
        TunelabError: no model, unknown model or folder, adapter on another base, prompt-learning adapter,
            duplicate or unsafe ids.
    """
    if not spec.model:
        raise TunelabError("no model to serve", where="serve.model", fix="tunelab serve MODEL_OR_RUN_DIR")
    from tunelab.models import is_run_dir

    main = Path(spec.model).expanduser()
    models = _from_run(main) if is_run_dir(main) else [_base_model(spec.model)]
    base = models[0]  # the weights every adapter must have been trained on
    for name, run in spec.adapters.items():
        models.append(_adapter(name, Path(run).expanduser(), base))
    _check_bottleneck_alone(models)
    if spec.embedding_model:
        models.append(_embedding(spec.embedding_model))
    return ModelCatalog(_check_ids(models))
