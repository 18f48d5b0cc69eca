"""``ray job submit --working-dir . -- python -m jobs.prepare -c jobs/configs/prepare.yaml -o s3://bucket/tokens``.

``raylm prepare`` inside a job: tokenise and pack curated Parquet into token shards on the
CPU pool (``ray.resources``).
"""

import sys

from raylm.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
