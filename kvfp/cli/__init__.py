"""The ``kvfp`` command line."""

import os

# OpenMP threads that finish early spin for their siblings by default; on a machine shared with other
# work that spinning takes cores from the work itself. Set before torch loads its OpenMP runtime; a
# value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
