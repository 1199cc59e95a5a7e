"""Data: prompt styles, loading and validation, splits, tokenization, the book's collator, recipes."""
