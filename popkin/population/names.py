"""The names of a population model's random variables, in one place.

The PyMC model (:mod:`popkin.population.pymc_model`) creates its variables under these names,
and everything that reads a fit's posterior (predictions, diagnostics, dosing, reports, the
start of the sampler) looks them up here, so a name is written once.

==================== ============================ ==========================================
quantity             variable                     summary row
==================== ============================ ==========================================
typical value        ``CL``                       ``CL`` (natural scale)
between-subject SD   ``omega_CL``                 ``omega_CL``
standardised effect  ``z_CL`` (non-centred)       --
random effect        ``eta_CL`` (per subject)     --
individual value     ``CL_i`` (per subject)       --
between-occasion SD  ``omega_occ_CL``             ``omega_occ_CL``
occasion effect      ``z_occ_CL``, ``kappa_CL``   --
correlation          ``corr_CL_V``                ``corr(CL,V)``
covariate effect     ``CL:WT``, ``CL:CYP3A5``     ``CL:WT``, ``CL:CYP3A5[*1/*1]``
level frequencies    ``freq:CYP3A5``              ``freq:CYP3A5[*1/*1]``
residual SD          ``sigma_prop``               ``sigma_prop`` (``sigma_prop_<output>`` with
                                                  several outputs)
observations         ``obs`` (``obs_<output>``)   --
==================== ============================ ==========================================

Examples
--------
>>> names = Names(("concentration",))
>>> names.omega("CL"), names.individual("CL"), names.sigma(0, "sigma_prop")
('omega_CL', 'CL_i', 'sigma_prop')
>>> Names(("concentration", "response")).sigma(1, "sigma_add")
'sigma_add_response'
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Names"]


@dataclass(frozen=True)
class Names:
    """Variable names of a model with outputs ``outputs`` (the structure's, in DVID order)."""

    outputs: tuple[str, ...] = ("concentration",)

    @staticmethod
    def typical(parameter: str) -> str:
        return parameter

    @staticmethod
    def omega(parameter: str) -> str:
        return f"omega_{parameter}"

    @staticmethod
    def z(parameter: str) -> str:
        return f"z_{parameter}"

    @staticmethod
    def eta(parameter: str) -> str:
        return f"eta_{parameter}"

    @staticmethod
    def individual(parameter: str) -> str:
        return f"{parameter}_i"

    @staticmethod
    def omega_occasion(parameter: str) -> str:
        return f"omega_occ_{parameter}"

    @staticmethod
    def z_occasion(parameter: str) -> str:
        return f"z_occ_{parameter}"

    @staticmethod
    def kappa(parameter: str) -> str:
        return f"kappa_{parameter}"

    @staticmethod
    def omega_block(parameters) -> str:
        return f"omega_block_{'_'.join(parameters)}"

    @staticmethod
    def z_block(parameters) -> str:
        return f"z_block_{'_'.join(parameters)}"

    @staticmethod
    def corr(first: str, second: str) -> str:
        return f"corr_{first}_{second}"

    @staticmethod
    def corr_row(first: str, second: str) -> str:
        return f"corr({first},{second})"

    @staticmethod
    def effect(parameter: str, covariate: str) -> str:
        return f"{parameter}:{covariate}"

    @staticmethod
    def frequency(covariate: str) -> str:
        return f"freq:{covariate}"

    def sigma(self, output: int, sigma: str) -> str:
        """Residual SD ``sigma`` of output ``output`` (0-based)."""
        return f"{sigma}_{self.outputs[output]}" if len(self.outputs) > 1 else sigma

    def observed(self, output: int) -> str:
        return f"obs_{self.outputs[output]}" if len(self.outputs) > 1 else "obs"

    @staticmethod
    def is_random_effect(variable: str) -> bool:
        """A per-subject standardised or random effect (not a population quantity)."""
        return variable.startswith(("z_", "eta_"))
