"""Real text the tests read: the Korean corpora that the ``konlpy`` wheel (a dev dependency)
ships, found through the installed package rather than a path inside one virtual environment."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.find_spec("konlpy")
KONLPY_CORPUS = Path(_spec.origin).parent / "data" / "corpus" if _spec and _spec.origin else Path("/nonexistent")
"""konlpy's ``data/corpus`` folder: ``kolaw/constitution.txt`` and ``kobill/*.txt``."""
KOLAW = KONLPY_CORPUS / "kolaw" / "constitution.txt"
"""The Constitution of the Republic of Korea (public domain)."""
