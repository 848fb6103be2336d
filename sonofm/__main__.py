"""``python -m sonofm`` (and ``accelerate launch -m sonofm ...``)."""

import sys

from sonofm.cli import main

sys.exit(main())
