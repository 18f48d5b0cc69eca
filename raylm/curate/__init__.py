"""Curation on Ray Data: raw text in, clean, deduplicated documents out (``raylm curate``).

``pipeline`` builds the run from ``steps/`` (normalise, quality rules, language ID, PII, ...)
and ``dedup/`` (exact, line and MinHash-LSH near-dedup decided on the cluster); ``read``,
``split`` and ``units`` cut the input into read units, ``sink``, ``stats`` and ``report`` write
what was kept and why the rest was dropped, and ``workdir`` lets a rerun resume.
"""
