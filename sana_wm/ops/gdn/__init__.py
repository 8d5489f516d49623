"""Frame-wise bidirectional Gated DeltaNet scans (stateless ops).

`bidirectional_gdn` (main branch, with the z-normaliser) and `bidirectional_delta` (camera single path) dispatch to
the fastest available implementation for the inputs' device; `naive.py` holds the float64 reference.
"""

from .naive import naive_bidirectional_delta, naive_bidirectional_gdn
from .torch_scan import bidirectional_delta, bidirectional_gdn

__all__ = ["bidirectional_gdn", "bidirectional_delta", "naive_bidirectional_gdn", "naive_bidirectional_delta"]
