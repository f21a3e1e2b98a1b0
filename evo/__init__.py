"""evo: evolutionary search for compressing causal language models to a memory budget."""

from evo.errors import EvoError

__version__ = "0.1.0"

__all__ = ["EvoError", "__version__"]
