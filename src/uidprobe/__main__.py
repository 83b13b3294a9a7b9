"""``python -m uidprobe``: the same as the ``uidprobe`` command."""

import sys

from uidprobe.cli import main

sys.exit(main())
