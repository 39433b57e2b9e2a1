"""Runs :func:`hpm.samples.main` (see its docstring): regenerates the sample set in assets/ from a data root."""
import sys

from hpm.samples import main

sys.exit(main())
