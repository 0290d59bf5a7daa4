"""`python -m fervid.cli` is `fervid`."""

from fervid.cli import main

main()
