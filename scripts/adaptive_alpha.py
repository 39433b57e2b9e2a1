"""Runs :func:`hpm.evaluation.mixer_alpha.main` (see its docstring): an adaptive mixture's alpha on clean and attacked images."""
import sys

from hpm.evaluation.mixer_alpha import main

sys.exit(main())
