"""The package's public API: every name `ood_lightning` and `ood_lightning.detectors` export resolves to the object
its module defines, and importing the package alone loads no heavy library (exports load on first use)."""
import subprocess
import sys

import ood_lightning
import ood_lightning.detectors


def test_every_exported_name_resolves():
    for package in (ood_lightning, ood_lightning.detectors):
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
