"""New data for a compiled nutpie sampler, named by the PyMC model and given in full.

A compiled sampler is reused for new data (a new patient, new observations on a design) through
nutpie's public ``with_data(**updates)``, which takes the names of the model's ``pm.Data``
variables and raises ``KeyError`` for a name it does not hold. Which names to pass is the
model's own knowledge, not nutpie's: the ``pm.Data`` variables (``model.data_vars``) that the
log-density or a deterministic reads. A ``pm.Data`` nothing reads (the rate of a bolus dose
group, say) is not in the compiled sampler and is left out. Every one that is read must get a
new value, or the sampler would go on with the values it had (the previous patient's).

nutpie's own record of the data it holds (``shared_data``) is keyed by internal ids from nutpie
0.16.9 on; a filter on it dropped every update without a word, and every patient after the
first was sampled with the first one's levels. Nothing here looks at it.
"""

from __future__ import annotations

__all__ = ["SamplerDataError", "sampled_data_names", "with_model_data"]


class SamplerDataError(RuntimeError):
    """New data could not be swapped into a compiled sampler (a popkin or nutpie defect, not
    the user's input): sampling on would use the previous data."""


def sampled_data_names(model) -> tuple[str, ...]:
    """Names of ``model``'s ``pm.Data`` variables that its log-density or deterministics read,
    in the model's order.

    Parameters
    ----------
    model
        A PyMC model.

    Returns
    -------
    tuple of str
        The names to give ``with_data`` when the data change.
    """
    from pytensor.graph.traversal import graph_inputs

    read = set(graph_inputs([model.logp(), *model.deterministics]))
    return tuple(var.name for var in model.data_vars if var in read)


def with_model_data(sampler, names, values: dict):
    """``sampler`` with the data ``names`` set to ``values[name]``, through nutpie's
    ``with_data``.

    Parameters
    ----------
    sampler
        A compiled nutpie model.
    names
        The data it reads (:func:`sampled_data_names` of the model it was compiled from).
    values
        New values by name; it must hold every one of ``names`` (others are ignored: data the
        compiled sampler does not read).

    Returns
    -------
    object
        A new compiled nutpie model; ``sampler`` is unchanged.

    Raises
    ------
    SamplerDataError
        A name without a new value, or one the sampler does not accept.
    """
    missing = [name for name in names if name not in values]
    if missing:
        raise SamplerDataError(f"no new value for the data {', '.join(missing)} that the "
                               "compiled model reads; it would keep the previous values")
    try:
        return sampler.with_data(**{name: values[name] for name in names})
    except (KeyError, ValueError) as exc:
        raise SamplerDataError(f"the compiled nutpie sampler did not accept the new data "
                               f"({exc}); nutpie {_version()} may have changed how data are "
                               "swapped in") from exc


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nutpie")
    except PackageNotFoundError:
        return "(version unknown)"
