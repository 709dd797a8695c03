"""The package's public API: every name `ood_lightning`, `ood_lightning.detectors` and the DiffGuard pipelines export
resolves to the object its module defines; importing the package alone loads no heavy library (exports load on first
use), and the checkpoint converters run with `python -m` without a warning that their package imported them first."""
import subprocess
import sys

import pytest

import ood_lightning
import ood_lightning.detectors
import ood_lightning.detectors.diffguard.gdm as gdm
import ood_lightning.detectors.diffguard.ldm as ldm


def test_every_exported_name_resolves():
    for package in (ood_lightning, ood_lightning.detectors, gdm, ldm):
        for name in package.__all__:
            obj = getattr(package, name)
            assert obj.__name__ == name, (package.__name__, name, obj)
    assert ood_lightning.LFDNDetector is ood_lightning.detectors.LFDNDetector
    assert issubclass(ood_lightning.CascadeFusion, ood_lightning.OODDetector)


def test_an_unknown_name_is_an_attribute_error():
    try:
        ood_lightning.NoSuchDetector
    except AttributeError as error:
        assert "NoSuchDetector" in str(error)
    else:
        raise AssertionError("ood_lightning.NoSuchDetector resolved")


def test_importing_the_package_loads_no_heavy_library():
    code = ("import sys, ood_lightning, ood_lightning.detectors; "
            "print(sorted({'torch', 'lightning', 'diffusers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("module", ["ood_lightning.detectors.diffguard.gdm.adm_checkpoint",
                                    "ood_lightning.detectors.diffguard.ldm.compvis_checkpoint"])
def test_the_converters_run_as_modules_without_a_warning(module):
    run = subprocess.run([sys.executable, "-W", "default", "-m", module, "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "usage" in run.stdout
    assert "RuntimeWarning" not in run.stderr, run.stderr
