"""Runs :func:`hpm.publish.defences.main` (see its docstring): the figure of each defences section of the manifest."""
import sys

from hpm.publish.defences import main

sys.exit(main())
