"""Entrypoints for ``ray job submit``: thin wrappers over the raylm CLI, no logic."""
