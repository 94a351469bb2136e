"""``python -m dataplane`` runs the CLI."""
from .cli import run

run()
