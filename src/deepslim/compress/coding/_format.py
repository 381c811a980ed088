"""The ``.dsz`` archive's fixed format: its header, versions, the dtypes it stores and the parts' accounting
categories (docs/archive-format.md). Shared by the writer (``_writing``), the reader (``_reading``) and the byte
accounting (``_info``); :mod:`deepslim.compress.coding.archive` re-exports the public names and ``_HEADER``."""

from __future__ import annotations

import struct

import torch

from deepslim.compress.coding import _dynamic_parts

MAGIC = b"\x89DSZ\r\n\x1a\n"
VERSION = 1
DYNAMIC_VERSION = _dynamic_parts.DYNAMIC_VERSION  # holds dynamic int8 weights (version-1 readers refuse it)
READABLE_VERSIONS = (VERSION, DYNAMIC_VERSION)
_HEADER = struct.Struct("<8sHHIQI")
HEADER_BYTES = _HEADER.size
FORMAT = "deepslim-archive"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
           "uint8": torch.uint8, "bool": torch.bool}  # fmt: skip
_BITS_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # a dtype's bit patterns as integers
# part name -> the accounting category it is reported under
PART_KIND = {"index": "indices", "index_table": "tables", "codes": "codes", "codes_table": "tables",
             "codebook": "codebooks", "scales": "scales", "zeros": "scales", "raw": "raw", "fp32_columns": "raw",
             "fp32_rows": "raw"}  # fmt: skip
