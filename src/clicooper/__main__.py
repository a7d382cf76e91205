"""``python -m clicooper``: the same as the ``clicooper`` console script."""

from clicooper.cli.app import main

if __name__ == "__main__":
    main()
