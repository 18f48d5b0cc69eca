"""``ray job submit --working-dir . -- python -m jobs.recipe -c jobs/configs/recipe_ko.yaml -o OUT``.

Every stage of the recipe joins the cluster (``RAY_ADDRESS`` is set inside a job).
"""

import sys

from raylm.cli import main

if __name__ == "__main__":
    sys.exit(main(["recipe", *sys.argv[1:]]))
