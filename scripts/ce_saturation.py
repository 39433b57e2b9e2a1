"""Runs :func:`hpm.evaluation.saturation.main` (see its docstring); kept as a script so that recorded commands stay valid."""
import sys

from hpm.evaluation.saturation import main

sys.exit(main())
