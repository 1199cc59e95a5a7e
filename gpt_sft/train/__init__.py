"""Training: the config, the loss and its exact shortcuts, LoRA, state and checkpoints, the loop."""
