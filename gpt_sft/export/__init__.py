"""Export: checkpoint bundles, the model card, the run folder, pushing to the Hub."""
