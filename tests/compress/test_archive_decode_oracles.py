"""An archive entry this version cannot decode is refused by name, saying what is wrong with it."""

import importlib

import pytest

from deepslim.errors import ArchiveError

archive = importlib.import_module("deepslim.compress.coding.archive")


def test_an_unknown_dtype_or_layout_is_refused_naming_the_tensor():
    entry = {"name": "fc.weight", "dtype": "float7", "shape": [2, 2], "layout": "dense"}
    with pytest.raises(ArchiveError, match=r"^tensor fc.weight: unknown dtype 'float7'$"):
        archive._decode_tensor(entry, memoryview(b""))
    with pytest.raises(ArchiveError, match=r"^tensor fc.weight: unknown layout 'diagonal'$"):
        archive._decode_tensor({**entry, "dtype": "float32", "layout": "diagonal"}, memoryview(b""))
