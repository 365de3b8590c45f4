"""`python -m cli ...` runs the `pdspace` command."""
import sys

from cli.main import main

sys.exit(main())
