import pytest

from popkin.data.examples import theophylline


@pytest.fixture(scope="module")
def theo_csv(tmp_path_factory):
    """The theophylline study as a NONMEM-format CSV."""
    path = tmp_path_factory.mktemp("data") / "theo.csv"
    theophylline().to_csv(path, index=False)
    return path
