"""``python3 -m jaxem ...``: the command line, also where the ``jaxem`` script is not on PATH."""
import sys

from jaxem.cli import main

sys.exit(main())
