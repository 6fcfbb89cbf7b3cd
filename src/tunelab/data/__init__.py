"""The data stage: read files, convert formats to chat examples, split, tokenize with assistant-only loss.

Typical use::

    data = prepare_data(recipe.data, tokenizer)
    data.encoded["train"]   # [{"input_ids", "labels", "n_tokens", "n_loss", "truncated"}, ...]
    data.splits["test"]     # [Example, ...] parallel to data.encoded["test"]
    write_rejects(data.rejects, run_dir / "rejects.jsonl")
"""

from tunelab.data.formats import detect_format, to_examples
from tunelab.data.pipeline import PreparedData, prepare_data, write_rejects
from tunelab.data.readers import read_records
from tunelab.data.records import Example, Reject
from tunelab.data.split import split_examples
from tunelab.data.tokenize import encode_example

__all__ = [
    "Example", "PreparedData", "Reject", "detect_format", "encode_example", "prepare_data", "read_records",
    "split_examples", "to_examples", "write_rejects",
]
