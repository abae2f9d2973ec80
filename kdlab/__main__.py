"""``python -m kdlab`` (also under ``torchrun``)."""

import sys

from kdlab.cli.main import main

sys.exit(main())
