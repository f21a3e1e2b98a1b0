"""The embedded default calibration corpus (exllamav2's mixed-domain calibration text, MIT).

Six zstd-compressed UTF-8 files, one per domain; evo.data reads them when no --corpus is given.
"""
