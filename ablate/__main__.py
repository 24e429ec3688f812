"""`python -m ablate` runs the CLI."""
from ablate._main import run

run()
