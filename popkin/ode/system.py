r"""ODE systems: states, parameters, right-hand side, initial state and outputs, in sympy.

A system is pure data. :func:`popkin.ode.codegen.compile_system` turns it into native code; the
derivatives the solver needs (Jacobian :math:`\partial f/\partial y`, parameter derivatives
:math:`\partial f/\partial p`, :math:`\partial y_0/\partial p` and the outputs' derivatives) are
taken here, symbolically, so gradients are exact.

Examples
--------
>>> import sympy as sp
>>> depot, central, KA, CL, V = sp.symbols("depot central KA CL V")
>>> system = OdeSystem.from_expressions(
...     states=[depot, central],
...     rhs=[-KA * depot, KA * depot - CL / V * central],
...     outputs={"concentration": central / V})
>>> system.parameters
('CL', 'KA', 'V')
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, Sequence

import sympy as sp

__all__ = ["OdeSystem", "TIME", "RESERVED", "MAX_EXACT_CHAIN", "MAX_EXACT_PATHS"]

TIME = sp.Symbol("t")
# names the engine gives a meaning of its own: dose parameters and time
RESERVED = frozenset({"F", "ALAG", "t"})


@dataclass(frozen=True)
class OdeSystem:
    """``dy/dt = f(t, y, p)`` with ``y(start) = y0(p)`` and outputs ``g(t, y, p)``.

    ``parameters`` are the free symbols of the equations that are neither states nor time,
    in sorted order unless given. Doses enter as jumps and input rates added to ``f`` by the
    solver; they are not part of the system.
    """

    states: tuple[str, ...]
    parameters: tuple[str, ...]
    rhs: tuple[sp.Expr, ...]
    initial: tuple[sp.Expr, ...]
    output_names: tuple[str, ...]
    outputs: tuple[sp.Expr, ...]

    @classmethod
    def from_expressions(
        cls,
        states: Sequence[sp.Symbol | str],
        rhs: Sequence[sp.Expr],
        outputs: Mapping[str, sp.Expr],
        *,
        initial: Mapping[str, sp.Expr] | None = None,
        parameters: Sequence[str] | None = None,
    ) -> "OdeSystem":
        """Build a system from sympy expressions (states as symbols or names).

        ``initial`` maps state names to their initial value (0 when absent); ``parameters``
        fixes the parameter order (all free symbols must be listed).
        """
        names = tuple(str(s) for s in states)
        if len(set(names)) != len(names):
            raise ValueError(f"state names must be distinct: {', '.join(names)}")
        if len(rhs) != len(names):
            raise ValueError(f"{len(names)} states but {len(rhs)} right-hand sides")
        clash = sorted(RESERVED & set(names))
        if clash:
            raise ValueError(f"state name(s) {', '.join(clash)} are reserved (F: bioavailability, "
                             "ALAG: lag time, t: time)")
        initial = dict(initial or {})
        unknown = sorted(set(initial) - set(names))
        if unknown:
            raise ValueError(f"initial value for unknown state(s) {', '.join(unknown)}; "
                             f"states: {', '.join(names)}")
        init = tuple(sp.sympify(initial.get(s, 0)) for s in names)
        rhs = tuple(sp.sympify(e) for e in rhs)
        outs = tuple(sp.sympify(e) for e in outputs.values())
        if not outs:
            raise ValueError("an ODE system needs at least one output")
        state_symbols = {sp.Symbol(s) for s in names}
        free = set().union(*(e.free_symbols for e in rhs + outs + init)) - state_symbols - {TIME}
        free_names = {str(s) for s in free}
        used_reserved = sorted(free_names & RESERVED)
        if used_reserved:
            raise ValueError(f"{', '.join(used_reserved)} cannot appear in the equations: the "
                             "engine applies F and ALAG to doses itself")
        time_in_init = [s for s, e in zip(names, init) if TIME in e.free_symbols]
        if time_in_init:
            raise ValueError(f"initial value of {', '.join(time_in_init)} depends on time t")
        if parameters is None:
            params = tuple(sorted(free_names))
        else:
            params = tuple(parameters)
            missing = sorted(free_names - set(params))
            if missing:
                raise ValueError(f"symbol(s) {', '.join(missing)} appear in the equations but "
                                 f"not among the parameters {', '.join(params)}")
        return cls(names, params, rhs, init, tuple(outputs), outs)

    # -- symbols and derivatives -------------------------------------------------------------

    @property
    def state_symbols(self) -> list[sp.Symbol]:
        return [sp.Symbol(s) for s in self.states]

    @property
    def parameter_symbols(self) -> list[sp.Symbol]:
        return [sp.Symbol(p) for p in self.parameters]

    def jacobian(self) -> sp.Matrix:
        """``d f_i / d y_j``."""
        return sp.Matrix(self.rhs).jacobian(self.state_symbols)

    def parameter_jacobian(self) -> sp.Matrix:
        """``d f_i / d p_k``."""
        return sp.Matrix(self.rhs).jacobian(self.parameter_symbols)

    def initial_jacobian(self) -> sp.Matrix:
        """``d y0_i / d p_k``."""
        return sp.Matrix(self.initial).jacobian(self.parameter_symbols)

    def output_state_jacobian(self) -> sp.Matrix:
        return sp.Matrix(self.outputs).jacobian(self.state_symbols)

    def output_parameter_jacobian(self) -> sp.Matrix:
        return sp.Matrix(self.outputs).jacobian(self.parameter_symbols)

    # -- structure ---------------------------------------------------------------------------

    @cached_property
    def affine_in_states(self) -> bool:
        """Whether every right-hand side is affine in the states (``d f / d y`` free of them).

        Then one dosing interval maps the state before a dose affinely to the state before
        the next, and the solver's steady-state Newton iteration is exact in one step.
        """
        states = set(self.state_symbols)
        return not any(states & e.free_symbols for e in self.jacobian())

    @cached_property
    def exact_inputs(self) -> dict[int, tuple[int, ...]]:
        """The states the solver computes exactly between events, each with the exact states
        that feed it.

        A state qualifies when its right-hand side is ``-a(p) y_i + sum_j b_ij(p) y_j`` besides
        its dose input: linear in states that qualify too, without time or a constant term,
        and with no state feeding itself back through others (a depot, a transit chain, a
        one-compartment central state with linear elimination, an effect compartment; not the
        central state of a two-compartment model, which exchanges with its periphery). Between
        events each is then a sum over the chains that reach it of divided differences of
        ``exp(-a t)``, so the solver integrates only the other states. Chains are at most
        :data:`MAX_EXACT_CHAIN` states long and a state has at most
        :data:`MAX_EXACT_PATHS` of them; deeper states are integrated.

        Examples
        --------
        >>> depot, central, KA, CL, V = sp.symbols("depot central KA CL V")
        >>> OdeSystem.from_expressions([depot, central],
        ...     [-KA * depot, KA * depot - CL / V * central], {"c": central / V}
        ...     ).exact_inputs
        {0: (), 1: (0,)}
        """
        states = self.state_symbols
        n = len(states)
        jac = self.jacobian()
        linear = set()
        for i, f in enumerate(self.rhs):
            row = [jac[i, j] for j in range(n)]
            if any(TIME in e.free_symbols or set(states) & e.free_symbols for e in row):
                continue
            if sp.simplify(f - sum(c * y for c, y in zip(row, states))) != 0:
                continue
            linear.add(i)
        inputs = {i: {j for j in range(n) if j != i and jac[i, j] != 0} for i in linear}
        exact = set(linear)
        while True:
            # fed by a state that is not exact, or on a feedback loop, or too deep
            depth, paths = _chains(inputs, exact)
            drop = {i for i in exact
                    if not inputs[i] <= exact or depth[i] is None or depth[i] > MAX_EXACT_CHAIN
                    or paths[i] > MAX_EXACT_PATHS}
            if not drop:
                break
            exact -= drop
        return {i: tuple(sorted(inputs[i])) for i in sorted(exact)}

    @property
    def exact_states(self) -> tuple[int, ...]:
        """The states solved exactly between events (see :attr:`exact_inputs`)."""
        return tuple(self.exact_inputs)

    @cached_property
    def linear_in_states(self) -> bool:
        r"""Whether the system is linear and homogeneous in its states, without time.

        True when every right-hand side and every output is :math:`\sum_j c_j(p)\, y_j`
        (no constant or forcing term, no product or other nonlinear function of states, no
        explicit ``t``) and the initial state is zero. Then the solution is a linear function
        of the doses: ``F`` scales each dose, ``ALAG`` shifts it, an infusion of fixed duration
        scales with its amount, and a steady state is linear in the maintenance dose, so a
        regimen's predictions are sums of scaled unit-dose predictions (superposition).

        Examples
        --------
        >>> depot, central, KA, CL, V, VMAX, KM = sp.symbols("depot central KA CL V VMAX KM")
        >>> oral = OdeSystem.from_expressions([depot, central],
        ...     [-KA * depot, KA * depot - CL / V * central], {"concentration": central / V})
        >>> oral.linear_in_states
        True
        >>> saturable = OdeSystem.from_expressions([central],
        ...     [-VMAX * central / (KM * V + central)], {"concentration": central / V})
        >>> saturable.linear_in_states
        False
        """
        if not self.affine_in_states:
            return False
        states = self.state_symbols
        zero = dict.fromkeys(states, 0)
        outputs_affine = not any(set(states) & e.free_symbols
                                 for e in self.output_state_jacobian())
        if not outputs_affine:
            return False
        # affine, so each expression is its slopes times the states plus this intercept
        for expr in self.rhs + self.outputs:
            if TIME in expr.free_symbols or sp.simplify(expr.subs(zero)) != 0:
                return False
        return all(sp.simplify(e) == 0 for e in self.initial)


# the longest chain of exact states the solver follows (states), and the most chains that may
# reach one state: deeper or more connected states are integrated
MAX_EXACT_CHAIN = 6
MAX_EXACT_PATHS = 16


def _chains(inputs: Mapping[int, set[int]], exact: set[int]
            ) -> tuple[dict[int, int | None], dict[int, int]]:
    """For each state of ``exact``: the number of states on its longest chain of exact
    inputs (``None`` when it lies on or below a loop), and the number of chains that end
    at it (itself alone included)."""
    depth: dict[int, int | None] = {}
    paths: dict[int, int] = {}
    visiting: set[int] = set()

    def visit(i: int) -> int | None:
        if i in depth:
            return depth[i]
        if i in visiting:
            return None
        visiting.add(i)
        deepest, count = 0, 1
        for j in inputs[i] & exact:
            d = visit(j)
            if d is None:
                deepest = None
                break
            deepest = max(deepest, d)
            count += paths.get(j, 1)
        visiting.discard(i)
        depth[i] = None if deepest is None else deepest + 1
        paths[i] = count
        return depth[i]

    for i in exact:
        visit(i)
    return depth, paths
