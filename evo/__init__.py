"""evo: evolutionary search for compressing causal language models to a memory budget."""

from evo.errors import EvoError

__version__ = "0.1.0"


def load(path, device="cpu", dtype=None, *, expected_base_model=None, resident="dense", max_resident_mb=None,
         target_tokens_per_s=None, prefetch=1):
    """(model, tokenizer) from an evo artifact directory; see evo.compress.artifact.load.

    resident: "dense" (default), "codes", "compressed" or "auto" (see evo.runtime.resident).
    Imported on first use so that `import evo` stays free of torch and transformers.
    """
    from evo.compress.artifact import load as _load

    return _load(path, device=device, dtype=dtype, expected_base_model=expected_base_model, resident=resident,
                 max_resident_mb=max_resident_mb, target_tokens_per_s=target_tokens_per_s, prefetch=prefetch)


__all__ = ["EvoError", "__version__", "load"]
