"""`python -m ddkit` is the `ddkit` command (so `torchrun -m ddkit ...` works too)."""

from ddkit.cli import main

if __name__ == "__main__":
    main()
