r"""Registered nonlinear structural models, solved by the ODE engine.

They join the registry of :mod:`popkin.structural` under these names when :mod:`popkin.ode`
is imported (``import popkin`` does).

Concentrations are :math:`C = A_c / V` with :math:`A_c` the central amount. Models with a PD
part have two outputs: ``DVID`` 1 is the concentration, ``DVID`` 2 the response. ``F`` and
``ALAG`` apply to doses into the dose compartment (the first state), as for the closed forms.

``michaelis_menten_iv`` (central), ``michaelis_menten_oral`` (depot, central)
    .. math:: \dot A_d = -K_A A_d, \qquad
              \dot A_c = K_A A_d - \frac{V_{MAX}\, C}{K_M + C}

``transit_absorption`` (transit1..transit3, depot, central): three transit compartments
before the absorption depot, :math:`K_{TR} = (N + 1)/MTT` with :math:`N = 3`
    .. math:: \dot T_1 = -K_{TR} T_1, \quad \dot T_i = K_{TR}(T_{i-1} - T_i), \quad
              \dot A_d = K_{TR} T_3 - K_A A_d, \quad \dot A_c = K_A A_d - \frac{CL}{V} A_c

``emax_effect_compartment`` and ``sigmoid_emax_effect_compartment`` (depot, central, effect):
one-compartment oral PK, effect-site concentration :math:`C_e`
    .. math:: \dot C_e = K_{E0} (C - C_e), \qquad
              E = E_0 + \frac{E_{MAX} C_e^{HILL}}{EC_{50}^{HILL} + C_e^{HILL}}
    (``HILL`` = 1 for the plain Emax model).

``indirect_response_1`` .. ``indirect_response_4`` (depot, central, response): one-compartment
oral PK and a turnover response starting at :math:`R(0) = K_{IN}/K_{OUT}`
    .. math::
        \text{I: } \dot R = K_{IN}\Big(1 - \frac{I_{MAX} C}{IC_{50} + C}\Big) - K_{OUT} R \qquad
        \text{II: } \dot R = K_{IN} - K_{OUT}\Big(1 - \frac{I_{MAX} C}{IC_{50} + C}\Big) R

        \text{III: } \dot R = K_{IN}\Big(1 + \frac{E_{MAX} C}{EC_{50} + C}\Big) - K_{OUT} R \qquad
        \text{IV: } \dot R = K_{IN} - K_{OUT}\Big(1 + \frac{E_{MAX} C}{EC_{50} + C}\Big) R

``warfarin_pkpd`` (depot, central, pca): the warfarin PK/PD model (one-compartment oral with
lag ``ALAG``, inhibition of the synthesis of prothrombin complex activity)
    .. math:: \dot{PCA} = K_{OUT} E_0 \Big(1 - \frac{I_{MAX} C}{IC_{50} + C}\Big)
              - K_{OUT}\, PCA, \qquad PCA(0) = E_0

Examples
--------
>>> model = get_structure("indirect_response_1")
>>> model.parameters
('CL', 'IC50', 'IMAX', 'KA', 'KIN', 'KOUT', 'V')
>>> model.outputs
('concentration', 'response')
"""

from __future__ import annotations

import sympy as sp

from ..structural.base import get_structure, register
from .system import OdeSystem

__all__ = ["transit_absorption"]

_s = sp.symbols
CL, V, KA, VMAX, KM, MTT, KE0, E0, EMAX, EC50, HILL, KIN, KOUT, IMAX, IC50 = _s(
    "CL V KA VMAX KM MTT KE0 E0 EMAX EC50 HILL KIN KOUT IMAX IC50")
depot, central, effect, response, pca = _s("depot central effect response pca")


def _structure(name, system):
    # imported here so that the registry works without the CVODES library; solving needs it
    from .structure import OdeStructure

    return OdeStructure(name, system, dose_compartment=1)


def _define(name, states, rhs, outputs, initial=None):
    system = OdeSystem.from_expressions(states, rhs, outputs, initial=initial)
    register(name)(lambda: _structure(name, system))


def _michaelis_menten(conc):
    return VMAX * conc / (KM + conc)


_define("michaelis_menten_iv", [central], [-_michaelis_menten(central / V)],
        {"concentration": central / V})
_define("michaelis_menten_oral", [depot, central],
        [-KA * depot, KA * depot - _michaelis_menten(central / V)],
        {"concentration": central / V})


def transit_absorption(n_transit: int) -> OdeSystem:
    """The transit-absorption system with ``n_transit`` transit compartments."""
    if n_transit < 1:
        raise ValueError(f"n_transit must be at least 1, got {n_transit}")
    transit = sp.symbols(f"transit1:{n_transit + 1}")
    ktr = (n_transit + 1) / MTT
    rhs = [-ktr * transit[0]]
    rhs += [ktr * (transit[i - 1] - transit[i]) for i in range(1, n_transit)]
    rhs += [ktr * transit[-1] - KA * depot, KA * depot - CL / V * central]
    return OdeSystem.from_expressions(list(transit) + [depot, central], rhs,
                                      {"concentration": central / V})


register("transit_absorption")(lambda: _structure("transit_absorption", transit_absorption(3)))

_oral_pk = [-KA * depot, KA * depot - CL / V * central]
_conc = central / V

_define("emax_effect_compartment", [depot, central, effect],
        _oral_pk + [KE0 * (_conc - effect)],
        {"concentration": _conc, "effect": E0 + EMAX * effect / (EC50 + effect)})
_define("sigmoid_emax_effect_compartment", [depot, central, effect],
        _oral_pk + [KE0 * (_conc - effect)],
        {"concentration": _conc,
         "effect": E0 + EMAX * effect ** HILL / (EC50 ** HILL + effect ** HILL)})

_inhibition = IMAX * _conc / (IC50 + _conc)
_stimulation = EMAX * _conc / (EC50 + _conc)
for _k, _turnover in enumerate((
        KIN * (1 - _inhibition) - KOUT * response,
        KIN - KOUT * (1 - _inhibition) * response,
        KIN * (1 + _stimulation) - KOUT * response,
        KIN - KOUT * (1 + _stimulation) * response), start=1):
    _define(f"indirect_response_{_k}", [depot, central, response], _oral_pk + [_turnover],
            {"concentration": _conc, "response": response}, initial={"response": KIN / KOUT})

_define("warfarin_pkpd", [depot, central, pca],
        _oral_pk + [KOUT * E0 * (1 - _inhibition) - KOUT * pca],
        {"concentration": _conc, "pca": pca}, initial={"pca": E0})
