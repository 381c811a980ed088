"""An archive's byte accounting as JSON (ArchiveInfo.to_dict): every key, the tensors by name and shape, and the
totals consistent with the archive itself."""

import json

import torch
from torch import nn

from deepslim.compress.coding import archive_info, encode


def test_the_archive_record_has_every_key_and_the_tensors_sum_to_the_total():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    data = encode(model)
    info = archive_info(data)
    doc = json.loads(json.dumps(info.to_dict()))
    assert set(doc) == {"version", "total_bytes", "header_bytes", "by_part", "dense_fp32_bytes", "ratio", "tensors"}
    assert doc["total_bytes"] == len(data) and doc["version"] == info.version
    assert doc["dense_fp32_bytes"] == 4 * (24 + 4 + 8 + 2) and doc["ratio"] == info.ratio
    assert sorted((t["name"], t["shape"]) for t in doc["tensors"]) == [("0.bias", [4]), ("0.weight", [4, 6]),
                                                                       ("2.bias", [2]), ("2.weight", [2, 4])]
    assert all(set(t) == {"name", "shape", "layout", "encoding", "parts", "bytes"} for t in doc["tensors"])
    assert doc["header_bytes"] + sum(t["bytes"] for t in doc["tensors"]) == doc["total_bytes"]
    assert sum(doc["by_part"].values()) == doc["total_bytes"] and doc["by_part"]["header"] == doc["header_bytes"]
