"""Individual posteriors, targets, regimen search, recommendations.

>>> from popkin.dosing import parse_target
>>> parse_target("trough:10-20").describe()
'trough 10-20'

See :func:`recommend` for the whole step, :mod:`popkin.dosing.targets` for the target syntax,
:mod:`popkin.dosing.regimens` for the ``[dosing]`` options, :mod:`popkin.dosing.prior` and
:mod:`popkin.dosing.posterior` for the individual posterior.
"""

from .posterior import compilations
from .recommend import Recommendation, recommend, recommend_batch, recommend_each
from .targets import metric_names, parse_target, register_metric

__all__ = ["Recommendation", "compilations", "metric_names", "parse_target", "recommend",
           "recommend_batch", "recommend_each", "register_metric"]
