"""Chains stuck in another mode: a convergence check that does not rely on R-hat alone.

A chain that spends the whole run in a minor mode of the posterior samples at a lower log
density than chains in the main mode. R-hat sees it only when the chains' draws of some
parameter disagree by more than their within-chain spread, and with few chains, or with every
chain in the same wrong place, it may not. This check compares the chains' mean log density
directly: a chain whose mean is lower than the best chain's by more than a few log-density units
*and* by more than its Monte Carlo error is reported as stuck, with the parameters in which its
draws differ from the other chains'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["StuckChain", "stuck_chains"]

#: Smallest gap in mean log density (log-density units) reported, whatever the Monte Carlo error.
MIN_GAP = 3.0
#: A gap must also exceed this many standard errors of the difference of the two chain means.
GAP_SES = 4.0
#: A parameter differs when the stuck chain's median is this many SDs (of the other chains'
#: draws) away from the other chains' median.
PARAMETER_SDS = 3.0


@dataclass(frozen=True)
class StuckChain:
    """A chain whose mean log density lies below the best chain's by ``gap``."""

    chain: int
    gap: float                   # best chain's mean log density minus this chain's
    standard_errors: float       # gap / SE of the difference
    differences: tuple[tuple[str, float, float], ...]   # (parameter, this chain, other chains)

    def describe(self) -> str:
        if self.differences:
            shown = ", ".join(f"{name} {mine:.3g} (other chains {theirs:.3g})"
                              for name, mine, theirs in self.differences[:6])
            where = f"it differs in {shown}"
        else:
            where = "no single parameter differs by more than 3 SDs"
        return (f"chain {self.chain} is stuck below the others: its mean log density is "
                f"{self.gap:.1f} units lower than the best chain's ({self.standard_errors:.0f} "
                f"standard errors); {where}")


def chain_logp(idata) -> np.ndarray | None:
    """The sampled log density, (chain, draw), or None if the sampler did not record it."""
    stats = getattr(idata, "sample_stats", None)
    if stats is None:
        return None
    for name in ("logp", "lp"):
        if name in stats:
            return np.asarray(stats[name].values, dtype=float)
    return None


def stuck_chains(logp: np.ndarray, draws: dict[str, np.ndarray]) -> list[StuckChain]:
    """The chains stuck below the best one.

    Parameters
    ----------
    logp
        Log density of every draw, shape (chain, draw).
    draws
        Population parameters by name, each of shape (chain, draw), on the natural scale.

    Returns
    -------
    list of StuckChain
        Sorted by chain; empty when every chain samples at a comparable log density.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> logp = rng.normal(-100, 3, (4, 500))
    >>> logp[2] -= 15                            # chain 2 in a lower mode
    >>> ka = rng.lognormal(0, 0.05, (4, 500))
    >>> ka[2] *= 0.35
    >>> [s.chain for s in stuck_chains(logp, {"KA": ka})]
    [2]
    >>> stuck_chains(logp[[0, 1, 3]], {"KA": ka[[0, 1, 3]]})
    []
    """
    import arviz as az

    logp = np.asarray(logp, dtype=float)
    n_chains = logp.shape[0]
    if n_chains < 2 or logp.shape[1] < 20 or not np.all(np.isfinite(logp)):
        return []
    means = logp.mean(axis=1)
    # Monte Carlo SE of each chain's mean: its SD over the square root of its own ESS
    ses = np.array([np.std(logp[c], ddof=1) / np.sqrt(max(float(az.ess(logp[c][None, :])), 1.0))
                    for c in range(n_chains)])
    best = int(np.argmax(means))
    stuck = []
    for c in range(n_chains):
        gap = means[best] - means[c]
        se = float(np.hypot(ses[best], ses[c]))
        if c == best or gap <= max(MIN_GAP, GAP_SES * se):
            continue
        stuck.append((c, gap, gap / se if se > 0 else np.inf))
    if not stuck:
        return []
    stuck_set = {c for c, _, _ in stuck}
    good = [c for c in range(n_chains) if c not in stuck_set]
    out = []
    for c, gap, ses_away in stuck:
        differences = []
        for name, x in draws.items():
            x = np.asarray(x, dtype=float)
            others = x[good].ravel()
            spread = float(np.std(others))
            mine, theirs = float(np.median(x[c])), float(np.median(others))
            if spread > 0 and abs(mine - theirs) > PARAMETER_SDS * spread:
                differences.append((abs(mine - theirs) / spread, name, mine, theirs))
        differences.sort(reverse=True)
        out.append(StuckChain(c, float(gap), float(ses_away),
                              tuple((n, m, t) for _, n, m, t in differences)))
    return out
