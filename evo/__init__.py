"""evo: evolutionary search for compressing causal language models to a memory budget."""

from evo.errors import EvoError

__version__ = "0.1.0"


def load(path, device="cpu", dtype=None, *, expected_base_model=None):
    """(model, tokenizer) from an evo artifact directory; see evo.compress.artifact.load.

    Imported on first use so that `import evo` stays free of torch and transformers.
    """
    from evo.compress.artifact import load as _load

    return _load(path, device=device, dtype=dtype, expected_base_model=expected_base_model)


__all__ = ["EvoError", "__version__", "load"]
