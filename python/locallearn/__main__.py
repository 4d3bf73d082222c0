"""``python -m locallearn`` (and ``torchrun -m locallearn``): the command line of :mod:`locallearn.cli`."""

import sys

from locallearn.cli import main

sys.exit(main())
