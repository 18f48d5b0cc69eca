"""``ray job submit --working-dir . -- python -m jobs.pretrain -c jobs/configs/pretrain.yaml [--set k=v]``.

``raylm train`` inside a job: it joins the cluster (``RAY_ADDRESS``), its workers ask for a GPU
each (``scale.use_gpu``), and with ``max_failures`` a preempted spot node costs a restart
from the latest checkpoint in ``storage_path``.
"""

import sys

from raylm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
