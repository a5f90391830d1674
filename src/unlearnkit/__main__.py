"""``python -m unlearnkit``: the command line, as the ``unlearnkit`` script runs it."""

from .cli import run

if __name__ == "__main__":
    run()
