"""Population layer: model specs, covariate effects (genotype included), error models."""

from .covariates import CovariateEffect, SpecError, covariate_kinds, normalise_genotype
from .error import ErrorModel, error_models
from .spec import ModelSpec, ParameterSpec, library_models, load_model

__all__ = [
    "CovariateEffect", "ErrorModel", "ModelSpec", "ParameterSpec", "SpecError",
    "covariate_kinds", "error_models", "library_models", "load_model", "normalise_genotype",
]
