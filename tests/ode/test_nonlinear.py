"""The registered nonlinear (ODE) structures: the registry lists them, metadata, baselines and
limiting behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from popkin.data import build_event_table, read_dataset
from popkin.structural import get_structure

PARAMS = {
    "michaelis_menten_iv": {"V": 20.0, "VMAX": 10.0, "KM": 2.0},
    "michaelis_menten_oral": {"KA": 1.0, "V": 20.0, "VMAX": 10.0, "KM": 2.0},
    "transit_absorption": {"MTT": 2.0, "KA": 1.0, "CL": 2.0, "V": 20.0},
    "emax_effect_compartment": {"KA": 1.0, "CL": 2.0, "V": 20.0, "KE0": 0.5, "E0": 10.0,
                                "EMAX": 50.0, "EC50": 2.0},
    "sigmoid_emax_effect_compartment": {"KA": 1.0, "CL": 2.0, "V": 20.0, "KE0": 0.5, "E0": 10.0,
                                        "EMAX": 50.0, "EC50": 2.0, "HILL": 2.5},
    "indirect_response_1": {"KA": 1.0, "CL": 2.0, "V": 20.0, "KIN": 5.0, "KOUT": 0.5,
                            "IMAX": 0.9, "IC50": 1.0},
    "indirect_response_2": {"KA": 1.0, "CL": 2.0, "V": 20.0, "KIN": 5.0, "KOUT": 0.5,
                            "IMAX": 0.9, "IC50": 1.0},
    "indirect_response_3": {"KA": 1.0, "CL": 2.0, "V": 20.0, "KIN": 5.0, "KOUT": 0.5,
                            "EMAX": 2.0, "EC50": 1.0},
    "indirect_response_4": {"KA": 1.0, "CL": 2.0, "V": 20.0, "KIN": 5.0, "KOUT": 0.5,
                            "EMAX": 2.0, "EC50": 1.0},
    "warfarin_pkpd": {"KA": 1.0, "CL": 0.13, "V": 8.0, "E0": 100.0, "KOUT": 0.05, "IMAX": 0.95,
                      "IC50": 1.0, "ALAG": 0.5},
}


def _events(model, times=(0.0, 1.0, 6.0, 24.0, 72.0)):
    n_out = len(model.outputs)
    rows = [{"ID": 1, "TIME": 0.0, "AMT": 100.0, "EVID": 1, "DVID": 1}]
    rows += [{"ID": 1, "TIME": t, "EVID": 0, "DV": 1.0, "DVID": d}
             for t in times for d in range(1, n_out + 1)]
    return build_event_table(read_dataset(pd.DataFrame(rows).fillna({"AMT": 0.0})), model,
                             points="observations")


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_structure_predicts_finite_values(name):
    model = get_structure(name)
    assert set(model.parameters) | {"F", "ALAG"} >= set(PARAMS[name])
    assert set(PARAMS[name]) >= set(model.parameters)
    pred = model.predict(_events(model), PARAMS[name])
    assert np.all(np.isfinite(pred))


@pytest.mark.parametrize("name, baseline", [
    ("indirect_response_1", 10.0), ("indirect_response_3", 10.0), ("warfarin_pkpd", 100.0),
    ("emax_effect_compartment", 10.0)])
def test_pd_output_starts_at_baseline_and_moves(name, baseline):
    model = get_structure(name)
    events = _events(model)
    pred = model.predict(events, PARAMS[name])
    response = pred[events.point_dvid == 2]
    assert response[0] == pytest.approx(baseline, rel=1e-9)
    assert abs(response[2] - baseline) > 1e-3 * baseline


def test_warfarin_pca_falls_then_recovers():
    model = get_structure("warfarin_pkpd")
    events = _events(model, times=(0.0, 24.0, 48.0, 96.0, 2000.0))
    pca = model.predict(events, PARAMS["warfarin_pkpd"])[events.point_dvid == 2]
    assert pca[1] < 100.0 and pca[2] < pca[1] and pca[-1] == pytest.approx(100.0, rel=1e-3)


def test_michaelis_menten_at_low_concentration_is_linear():
    # KM >> C: elimination VMAX/KM * C, i.e. CL = VMAX/KM
    mm = get_structure("michaelis_menten_oral").with_options(rtol=1e-10, atol=1e-12)
    linear = get_structure("one_compartment_oral")
    events = _events(mm)
    pred = mm.predict(events, {"KA": 1.0, "V": 20.0, "VMAX": 2e6, "KM": 1e6})
    np.testing.assert_allclose(pred, linear.predict(events, {"KA": 1.0, "V": 20.0, "CL": 2.0}),
                               rtol=1e-5, atol=1e-12)



def test_the_registry_lists_them_without_the_cvodes_library(tmp_path):
    """``popkin.structural`` comes before ``popkin.ode`` and does not import it; the ODE
    structures still appear in its registry and in its errors, and listing them loads no
    CVODES (here none can be loaded)."""
    script = textwrap.dedent("""
        import sys
        from popkin.structural import get_structure, structure_names
        names = structure_names()
        assert {"michaelis_menten_oral", "transit_absorption", "warfarin_pkpd",
                "one_compartment_oral"} <= set(names), names
        try:
            get_structure("no_such_structure")
        except KeyError as exc:
            assert "indirect_response_4" in str(exc) and "two_compartment_iv" in str(exc), exc
        else:
            raise AssertionError("no error for an unknown structure")
        assert "popkin.ode._sundials" not in sys.modules
    """)
    env = dict(os.environ, POPKIN_CVODES_LIBRARY=str(tmp_path / "missing.so"))
    env.pop("POPKIN_CVODES", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
