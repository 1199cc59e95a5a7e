"""Verify: does a checkpoint, and each export beside it, behave as the model that was trained? (``gpt-sft verify``)"""
