"""Running an artifact at its size: resident modes (dense, bit-packed codes, coded frames decoded
on demand, speed-adaptive) and greedy generation with timing and memory figures."""

from evo.runtime.resident import RESIDENT_MODES, AutoPlan, ResidentMemory, ResidentOptions, resident_memory

__all__ = ["RESIDENT_MODES", "AutoPlan", "ResidentMemory", "ResidentOptions", "resident_memory"]
