"""``ray job submit --working-dir . -- python -m jobs.sweep -c jobs/configs/sweep.yaml``.

``raylm tune`` inside a job: a Ray Tune sweep whose trials are Ray Train runs on the GPU pool.
"""

import sys

from raylm.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
