"""``ray job submit --working-dir . -- python -m jobs.curate -c jobs/configs/curate.yaml IN -o OUT``.

Inside a submitted job ``RAY_ADDRESS`` is set, so the pipeline joins the cluster instead of
starting a local Ray.
"""

import sys

from raylm.cli import main

if __name__ == "__main__":
    sys.exit(main(["curate", *sys.argv[1:]]))
