"""Quality of a model: perplexity, KL to the dense model, zero-shot accuracy, activation statistics,
and the cached evaluator the search scores candidates with."""
