"""Without pharmpy (the ``nonmem`` extra) popkin imports and works, and ``popkin import``
says in one line how to install it. pharmpy is hidden from a subprocess by an import hook,
so this test runs the same with and without the extra installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

STREAMS = Path(__file__).parent / "control_streams"

_BLOCK_PHARMPY = textwrap.dedent("""
    import sys
    from importlib.abc import MetaPathFinder

    class Block(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "pharmpy" or name.startswith("pharmpy."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
""")


def test_without_pharmpy_popkin_works_and_import_says_how_to_install(tmp_path):
    shutil.copy(STREAMS / "study.csv", tmp_path / "study.csv")
    ctl = shutil.copy(STREAMS / "advan2_allometric.ctl", tmp_path / "run1.ctl")
    script = _BLOCK_PHARMPY + textwrap.dedent(f"""
        import popkin, popkin.interop
        from popkin.cli import main
        from popkin.interop import MissingExtraError, import_nonmem
        assert "pharmpy" not in sys.modules
        spec = popkin.load_model("theophylline")
        try:
            import_nonmem({str(ctl)!r})
        except MissingExtraError as exc:
            print("API:", exc)
        sys.exit(main(["import", {str(ctl)!r}, "--out", {str(tmp_path / 'spec.toml')!r}]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    assert 'API: reading NONMEM control streams needs pharmpy' in result.stdout
    assert 'pip install "popkin[nonmem]"' in result.stdout
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("popkin import: error:"), result.stderr
    assert 'pip install "popkin[nonmem]"' in err[0]
    assert not (tmp_path / "spec.toml").exists()
