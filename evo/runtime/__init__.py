"""Running an artifact at its size: resident modes (dense, bit-packed codes, coded frames decoded
on demand, speed-adaptive) and greedy generation with timing and memory figures."""

from evo.constants import RESIDENT_MODES
from evo.runtime.resident import AutoPlan, ResidentMemory, ResidentOptions, resident_memory

__all__ = ["RESIDENT_MODES", "AutoPlan", "ResidentMemory", "ResidentOptions", "resident_memory"]
