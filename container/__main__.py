"""``python -m container``: the container image's entrypoint."""

import sys

from container.main import main

sys.exit(main())
