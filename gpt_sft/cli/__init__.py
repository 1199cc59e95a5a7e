"""The commands: gpt-sft train, generate, evaluate, refresh-code (the top layer: it composes the stages)."""
