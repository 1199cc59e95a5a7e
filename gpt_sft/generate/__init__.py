"""Generation: batched KV-cache decoding equal to the book's greedy loop, and responses as text."""
