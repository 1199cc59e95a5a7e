"""The LLM judge: the book's prompt, robust score parsing, backends, a resumable cache, reports."""
