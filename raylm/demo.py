"""``raylm demo``: the whole platform on the shipped sample corpus, on a local Ray.

Today that is the curation pipeline with every step on (normalise, quality, language ID,
PII masking, exact, line and MinHash dedup); tokenisation and training join as they land.
"""

from __future__ import annotations

from pathlib import Path

from raylm.data.pipeline import CurateConfig, RayConfig, run

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


def run_demo(output: str = "out/demo", num_cpus: int = 4) -> int:
    if not SAMPLE.is_dir():
        raise FileNotFoundError(f"{SAMPLE}: the sample corpus is missing from this checkout")
    cfg = CurateConfig(ray=RayConfig(num_cpus=num_cpus))
    stats = run(cfg, [str(SAMPLE)], f"{output}/curated", overwrite=True)
    print(f"\ncurated {stats['documents_in']} sample documents -> {stats['kept']} kept; "
          f"report: {output}/curated/report.html")
    return 0 if stats["conservation_ok"] else 1
