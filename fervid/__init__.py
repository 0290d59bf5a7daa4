"""fervid"""

from fervid.threads import prepare_environment

# Before anything imports torch: its OpenMP pool threads sleep when idle instead of spinning (see fervid/threads.py).
prepare_environment()
