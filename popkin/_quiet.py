"""The dependencies' own noise, kept from popkin's users; popkin's own warnings still reach them.

* PyTensor warns once per process that it "could not link to a BLAS installation": popkin's
  models compile with numba (nutpie) or use no BLAS-backed Op on the C backend, so the speed it
  warns about is not popkin's.
* numba's performance and deprecation warnings are about code generated inside numba and
  PyTensor, which a user can do nothing about.

Filters are added for these messages and modules only (``warnings.filterwarnings`` with a
message or module pattern), never a blanket filter, and only once.
"""

from __future__ import annotations

import warnings

_DONE = False


def quiet_dependencies() -> None:
    """Add the filters (idempotent)."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    warnings.filterwarnings("ignore", message=r"PyTensor could not link to a BLAS installation",
                            category=UserWarning)
    # warnings issued by numba's own modules (NumbaPerformanceWarning and the like)
    warnings.filterwarnings("ignore", module=r"numba(\.|$)")
