"""``python -m svlm`` runs the ``svlm`` command line."""

from svlm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
