"""popkin's Dask clients leave dask's global configuration to the user (in a file of its own:
test_distributed.py keeps a default client of its own open for the whole module)."""

import dask
import distributed
import numpy as np

from popkin.simulation import iter_tasks


def draw(seed):
    return float(np.random.default_rng(seed).normal())


def test_popkin_leaves_dask_s_default_scheduler_to_the_user():
    """A client popkin makes is never dask's default: closed after the user's own default
    client (an iter_tasks generator abandoned, then collected), it once restored the user's
    client's "dask.distributed" after that client was gone, and xarray's netCDF writer (a fit's
    save) then failed with "no Client active" for the rest of the process."""
    with dask.config.set(scheduler="sync"):
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                      dashboard_address=":0") as cluster:
            user = distributed.Client(cluster)          # the user's default client
            assert dask.config.get("scheduler") == "dask.distributed"
            results = iter_tasks(draw, range(10), scheduler=cluster.scheduler_address)
            assert next(results) == draw(0)             # popkin's client is open
            assert dask.config.get("scheduler") == "dask.distributed"
            user.close()
            assert dask.config.get("scheduler") == "sync"
            results.close()                             # popkin's client closes last
        assert dask.config.get("scheduler") == "sync"
