"""`python -m fervid ...`: what `fervid up` starts its worker processes with."""

from fervid.cli import main

main()
