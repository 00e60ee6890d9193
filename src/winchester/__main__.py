"""``python -m winchester``: the ``winchester`` command."""

from winchester.cli import main

if __name__ == "__main__":
    main(prog_name="winchester")
