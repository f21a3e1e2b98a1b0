"""GGUF output for llama.cpp: block encoders (quants), llama.cpp's recipes, the exact file size
(size), the writer, the importance matrix (imatrix) and compress_to_gguf (export), which
`evo compress --format gguf` (evo/cli/compress.py) calls."""
