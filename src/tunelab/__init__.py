"""tunelab: adapt an open LLM to your task, from raw data to an evaluated, served model."""

from tunelab.errors import TunelabError

__version__ = "0.1.0"
__all__ = ["TunelabError", "__version__"]
