"""GGUF output for llama.cpp: block encoders (quants), llama.cpp's recipes, the exact file size
(size), the writer, and `evo compress --format gguf` (export, command)."""
