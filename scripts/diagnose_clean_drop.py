"""Runs :func:`hpm.evaluation.diagnosis.main` (see its docstring)."""
import sys

from hpm.evaluation.diagnosis import main

sys.exit(main())
