import subprocess
import sys

import deepslim as ds


def test_public_api_resolves():
    for name in ds.__all__:
        assert getattr(ds, name) is not None, name


def test_errors_share_one_base():
    for name in ds.__all__:
        obj = getattr(ds, name)
        if isinstance(obj, type) and name.endswith("Error"):
            assert issubclass(obj, ds.DeepSlimError)


def test_import_stays_light():
    heavy = "('onnx', 'onnxruntime', 'matplotlib', 'sklearn')"
    code = f"import sys, deepslim; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
