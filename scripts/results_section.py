"""Runs :func:`hpm.publish.readme.main` (see its docstring); kept as a script so that recorded commands stay valid."""
import sys

from hpm.publish.readme import main

sys.exit(main())
