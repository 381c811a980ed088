"""benchmarks' float layout (int8_archive.float_layout, shared with archive_decode.py): inside it an archive of a
dynamic int8 encoder is written as session 9 wrote it (version 1, float weights), and the writer is restored after."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
pytest.importorskip("transformers", reason="the dynamic int8 encoder needs the transformers package")

import deepslim as ds  # noqa: E402
from deepslim.compress.coding import archive  # noqa: E402
from tests.train._bert import bert_teacher  # noqa: E402


def test_the_float_layout_writes_version_1_archives_only_inside_it_and_both_benchmarks_share_it(tmp_path):
    import archive_decode
    import int8_archive

    assert archive_decode.float_layout is int8_archive.float_layout
    ids = torch.randint(5, 120, (4, 8), generator=torch.Generator().manual_seed(0))
    q = ds.quantize_(bert_teacher(tmp_path / "bert", 1), ds.LinearQuantConfig(bits=8, calibration="dynamic"),
                     calib_data=[(ids, torch.ones_like(ids))])  # fmt: skip
    real = archive._inference_tensors
    with int8_archive.float_layout():
        ds.save_model(q, tmp_path / "v1.dsz")
    ds.save_model(q, tmp_path / "v2.dsz")
    with pytest.raises(RuntimeError), int8_archive.float_layout():
        raise RuntimeError("a failed save")
    assert archive._inference_tensors is real
    v1, v2 = (ds.archive_info((tmp_path / f"v{v}.dsz").read_bytes()) for v in (1, 2))
    assert (v1.version, v2.version) == (1, 2) and v1.total_bytes > v2.total_bytes
