"""Using a trained model: load it from a checkpoint, evaluate it, generate with it."""
