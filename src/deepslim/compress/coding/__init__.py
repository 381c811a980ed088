"""Entropy coding and the compact archive (Deep Compression's last stage)."""

from deepslim.compress.coding.huffman import HuffmanTable, code_lengths, decode, encode

__all__ = ["HuffmanTable", "code_lengths", "decode", "encode"]
