"""Data in: corpora (corpus), the CCDS calibration sampler (ccds), the calibration set it writes
(calibset), zero-shot task files (tasks), and the embedded default corpus (calibration_mix/)."""
