"""The runtime shared by the entry points: config loading and checking, checkpoints, model
building, inputs, output folders and errors."""
