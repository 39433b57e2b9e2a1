"""Runs :func:`hpm.publish.sweeps.main` (see its docstring); kept as a script so that recorded commands stay valid."""
import sys

from hpm.publish.sweeps import main

sys.exit(main())
