"""What a run leaves behind for people: plots, the model card, the run report."""
