"""classifier"""

from fervid.threads import prepare_environment

# This package's modules import torch: fervid's OpenMP settings must be in the environment first, however the
# package is reached (fervid/threads.py).
prepare_environment()
