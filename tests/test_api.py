import inspect
import subprocess
import sys
import types

import deepslim as ds


def test_public_api_is_deepslims_own_classes_and_functions_listed_once():
    assert len(ds.__all__) == len(set(ds.__all__)), "a name is listed twice in deepslim.__all__"
    for name in ds.__all__:
        obj = getattr(ds, name)  # AttributeError: listed but not imported
        assert inspect.isclass(obj) or inspect.isfunction(obj), f"{name} is {type(obj).__name__}"
        assert obj.__module__.startswith("deepslim."), f"{name} comes from {obj.__module__}, not deepslim"
    star: dict[str, object] = {}
    exec("from deepslim import *", star)
    assert set(star) - {"__builtins__"} == set(ds.__all__)
    # everything else public on the package is a subpackage, never a leaked helper or third-party name
    extra = {n for n in dir(ds) if not n.startswith("_")} - set(ds.__all__)
    assert all(isinstance(getattr(ds, n), types.ModuleType) and getattr(ds, n).__name__ == f"deepslim.{n}"
               for n in extra), sorted(extra)  # fmt: skip


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
