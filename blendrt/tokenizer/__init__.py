"""Tokenizers (sentencepiece and Hugging Face tokenizer.json), streaming detokenization and
chat formats rendered append-only in token space."""
