"""`python -m adapler_export ...`: the CLI where the `adapler-export` script is not installed."""
import sys

from .cli import main

sys.exit(main())
