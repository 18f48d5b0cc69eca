"""raylm: raw text to a trained language model on a Ray cluster."""

__version__ = "0.1.0"
