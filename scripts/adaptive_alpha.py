"""Runs :func:`hpm.evaluation.mixer_alpha.main` (see its docstring): an adaptive mixture's alpha, clean and attacked."""
import sys

from hpm.evaluation.mixer_alpha import main

sys.exit(main())
