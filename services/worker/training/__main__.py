"""`python -m services.worker.training STAGE_DIR`: one training run (see :mod:`.run`)."""

import sys

from services.worker.training.run import main

if __name__ == "__main__":
    sys.exit(main())
