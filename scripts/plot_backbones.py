"""Runs :func:`hpm.publish.backbones.main` (see its docstring): the figure of each backbones section of the manifest."""
import sys

from hpm.publish.backbones import main

sys.exit(main())
