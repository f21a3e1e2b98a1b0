# Source in every device call after the bring-up (scripts/device/setup.sh): evo from this checkout,
# the carried wheels, the alias smollm2-135m, the carried data, llama.cpp's tools on PATH. Offline.
export EVO_DEV=${EVO_DEV:-/tmp/evo-dev} EVO_SITE=${EVO_SITE:-/tmp/site}
export PYTHONPATH=$EVO_SITE:$EVO_DEV/models:$PWD${PYTHONPATH:+:$PYTHONPATH}
export EVO_DATA_DIR=$EVO_DEV/data HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PATH=$EVO_DEV/llama/cuda/bin:$EVO_DEV/llama/cpu/bin:$PATH
