"""Tokenizers and token datasets (LLaMA §2.1).

The tokenizer is trained the paper's way: sentencepiece BPE, numbers split into digits, byte fallback
for unknown UTF-8. The corpus is encoded once into flat token files read back through numpy memmaps.
"""

# ***** tokenizers *****

# ***** corpus, datasets and batches *****
