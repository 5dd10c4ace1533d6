"""A fit's posterior container: an ``xarray.DataTree`` with ArviZ's groups.

ArviZ 1 keeps draws in a ``DataTree`` whose children are the groups (``posterior``,
``sample_stats``, ``log_likelihood``, ...). A fit saved by popkin 0.1 (ArviZ 0.x
``InferenceData``) is a netCDF file with the same groups, and reads into the same tree.
"""

from __future__ import annotations

import os

__all__ = ["has_group", "read_tree"]


def has_group(tree, name: str) -> bool:
    """Whether ``tree`` has the group ``name``."""
    return name in tree.children


def read_tree(path: str | os.PathLike):
    """The tree saved in the netCDF file ``path``, read into memory and the file closed."""
    import xarray as xr

    with xr.open_datatree(os.fspath(path), engine="h5netcdf") as tree:
        return tree.load().copy()
