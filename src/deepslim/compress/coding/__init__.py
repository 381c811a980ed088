"""Entropy coding and the compact archive (Deep Compression's last stage)."""

from deepslim.compress.coding.archive import ArchiveInfo, archive_info, decode, encode
from deepslim.compress.coding.huffman import HuffmanTable, code_lengths

__all__ = ["ArchiveInfo", "HuffmanTable", "archive_info", "code_lengths", "decode", "encode"]
