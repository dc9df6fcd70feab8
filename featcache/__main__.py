"""``python -m featcache`` (and ``torchrun -m featcache``) runs the CLI."""

from featcache.cli import main

if __name__ == "__main__":
    main()
