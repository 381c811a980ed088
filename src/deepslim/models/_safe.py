"""Opening a model file from a stranger without running their code.

``torch.load(weights_only=True)`` refuses pickled objects other than tensors and containers, but
``torch.export.load`` is not so careful. Reading PyTorch 2.13's ``torch/export/pt2_archive/_package.py`` and
``torch/_export/serde/serialize.py`` shows every place a ``.pt2`` file can make it run code:

- pickled members: the sample inputs (``data/sample_inputs/M.pt``, loaded with ``weights_only=True`` and, when that
  fails, *again with weights_only=False*), weights and constants stored with ``use_pickle`` in their config, the
  legacy ``data/weights/M.pt`` / ``data/constants/M.pt`` (``weights_only=False`` directly), ``custom_obj_*`` and
  ``opaque_obj_*`` constants (TorchScript's and Python's unpicklers), and a TorchScript zip in any of these
  (``torch.load`` hands it to ``torch.jit.load``);
- compiled code: ``data/aotinductor/`` holds shared libraries that are loaded;
- the program JSON (``models/M.json``): a node's target may be any attribute reachable from ``torch`` and is called
  when the model runs; symbolic expressions go through ``sympy.sympify`` (which evaluates Python); ``guards_code``
  strings are pasted into Python source and ``exec``-uted by ``program.module()``, as are parameter names and
  string inputs (quoted without escaping).

:func:`verify_pt2` checks all of that with the file's own bytes, before PyTorch sees it: pickles are scanned opcode
by opcode (nothing is unpickled) and may only name the globals of torch's weights-only unpickler; the program may
only call registered operators; expressions, guards and names must fit small grammars. :func:`verify_checkpoint`
does the same for a ``.pt`` checkpoint's ``data.pkl`` (which deepslim then loads with ``weights_only=True``).
Declared sizes are bounded by the file's length first, so a zip bomb is refused before anything is inflated.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickletools
import re
from pathlib import Path
from typing import Any, cast

import torch

from deepslim.errors import ModelLoadError
from deepslim.models._safe_program import SAFE_TEXT, Unsafe, check_program

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_MEMBERS = 100_000
# torch writes records uncompressed, so what a zip declares can only exceed its own size by the directory entries
_EXPANSION, _SLACK_BYTES = 2, 1 << 20
_PT2_FILES = frozenset({"archive_format", "archive_version", "byteorder"})
_PT2_DIRS = ("models/", "data/weights/", "data/constants/", "data/sample_inputs/", "extra/", ".data/")
_PT2_FIX = "re-export it with deepslim save_model (a .pt2 path and example_input)"
_PT_FIX = "save the weights with deepslim save_model or torch.save(model.state_dict())"

_STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                         "BINUNICODE8"})  # fmt: skip
_MEMO_PUTS, _MEMO_GETS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"}), frozenset({"GET", "BINGET", "LONG_BINGET"})
_CLASS_OPS = frozenset({"INST", "OBJ", "EXT1", "EXT2", "EXT4"})  # build objects from names torch's unpickler refuses


def verify_pt2(path: str | os.PathLike[str], data: bytes | None = None) -> None:
    """Raise ModelLoadError unless ``torch.export.load(path)`` would load ``path`` without running code from it.

    With ``data`` (the file's bytes, read once) the check reads those bytes, not the file: the caller then loads the
    same bytes (``io.BytesIO(data)``), so a file swapped between the check and the load cannot slip through.
    """
    path = Path(path)
    try:
        size = path.stat().st_size if data is None else len(data)
        names = _check_zip(path if data is None else io.BytesIO(data), size, "the file")
        if "version" in names:  # torch.export.load falls back to this pre-2.8 layout with Python's zipfile
            raise Unsafe("version", "marks the torch.export format of PyTorch 2.7 and earlier, which deepslim does "
                                     "not open")  # fmt: skip
        reader = _reader(str(path) if data is None else io.BytesIO(data), "the file")
        records = _check_records(reader, size, "the file")
        for name in records:
            if name not in _PT2_FILES and not name.startswith(_PT2_DIRS):
                raise Unsafe(name, "is not part of a torch.export program (compiled or foreign code)")
        for name in records:
            if name.startswith("models/"):
                _check_model(reader, records, name)
    except Unsafe as exc:
        member, problem = exc.args
        raise ModelLoadError(f"{path}: member {member!r} {problem}; {_PT2_FIX}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ModelLoadError(f"{path} cannot be checked as a torch.export program ({type(exc).__name__}: "
                             f"{str(exc)[:100]}); {_PT2_FIX}") from None  # fmt: skip


def verify_checkpoint(path: str | os.PathLike[str]) -> None:
    """Raise ModelLoadError unless ``path`` is a zip checkpoint whose pickle names only tensors and containers."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return  # no pickle in the format
    try:
        with path.open("rb") as f:
            head = f.read(4)
        if head != _ZIP_MAGIC:
            raise ModelLoadError(f"{path} is not a zip checkpoint (a legacy PyTorch pickle, or not PyTorch's at all); "
                                 f"deepslim reads only zip checkpoints (PyTorch >= 1.6): {_PT_FIX}")  # fmt: skip
        size = path.stat().st_size
        _check_zip(path, size, "the file")
        _check_pickled_zip(_reader(str(path), "the file"), size, "the file")
    except Unsafe as exc:
        member, problem = exc.args
        raise ModelLoadError(f"{path}: {member} {problem}; {_PT_FIX}") from None


# -- the container: names and sizes ----------------------------------------------------------------------------------


def _check_zip(source: Path | io.BytesIO, size: int, where: str) -> set[str]:
    """The member names in Python's view of a zip, after bounding their declared sizes by ``size``."""
    import zipfile

    try:
        with zipfile.ZipFile(source) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise Unsafe(where, f"is not a readable zip archive ({exc})") from None
    if len(infos) > _MAX_MEMBERS:
        raise Unsafe(where, f"has {len(infos)} members")
    for info in infos:
        _check_name(info.filename)
        if info.compress_size > size:
            raise Unsafe(info.filename, "declares more bytes than the file holds")
    _check_total(sum(info.file_size for info in infos), size, where)
    return {info.filename for info in infos}


def _check_total(declared: int, size: int, where: str) -> None:
    if declared > _EXPANSION * size + _SLACK_BYTES:
        raise Unsafe(where, f"declares {declared:,} uncompressed bytes in {size:,} bytes (a zip bomb)")


def _check_name(name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or "\\" in name or "\x00" in name or ".." in parts or re.match(r"[A-Za-z]:", name):
        raise Unsafe(name, "has a path that leaves the archive")


def _reader(source: str | io.BytesIO, where: str) -> Any:
    try:
        return torch._C.PyTorchFileReader(source)
    except Exception as exc:  # noqa: BLE001 -- any failure of torch's zip reader is a file it cannot open
        raise Unsafe(where, f"is not a PyTorch archive ({str(exc).splitlines()[0] if str(exc) else exc})") from None


def _check_records(reader: Any, size: int, where: str) -> list[str]:
    """The records of torch's own view of the zip (the one it loads from), their sizes bounded by ``size``."""
    records = list(reader.get_all_records())
    if len(records) > _MAX_MEMBERS:
        raise Unsafe(where, f"has {len(records)} members")
    for name in records:
        _check_name(name)
    _check_total(sum(reader.get_record_size(name) for name in records), size, where)
    return records


def _read(reader: Any, name: str) -> bytes:
    try:
        return reader.get_record(name)
    except Exception:  # noqa: BLE001 -- torch's reader raises RuntimeError for a missing record
        raise Unsafe(name, "is missing") from None


# -- pickles ---------------------------------------------------------------------------------------------------------


def _check_pickled_zip(reader: Any, size: int, where: str) -> None:
    """A ``torch.save`` zip: no TorchScript, and every pickle in it names only allowed globals."""
    records = _check_records(reader, size, where)
    if "constants.pkl" in records or any(r.startswith("code/") for r in records):
        raise Unsafe(where, "is a TorchScript archive (it holds code)")
    for name in sorted({"data.pkl", *(r for r in records if r.lower().endswith(".pkl"))}):
        _scan_pickle(_read(reader, name), f"{where}/{name}" if where != "the file" else name)


def _check_blob(blob: bytes, member: str) -> None:
    """A member that torch passes to ``torch.load`` (maybe with weights_only=False)."""
    if blob[:4] != _ZIP_MAGIC:
        raise Unsafe(member, "is not a torch.save zip (a bare pickle stream)")
    _check_zip(io.BytesIO(blob), len(blob), member)
    _check_pickled_zip(_reader(io.BytesIO(blob), member), len(blob), member)


@functools.cache
def _allowed_globals() -> frozenset[str]:
    from torch._weights_only_unpickler import _get_allowed_globals

    return frozenset(_get_allowed_globals())


def _global_name(module: str, name: str) -> str:
    from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

    module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
    return f"{module}.{name}"


def _scan_pickle(data: bytes, member: str) -> None:
    """Walk the opcodes of one pickle (nothing is built) and refuse any global outside torch's weights-only list."""
    allowed = _allowed_globals()
    recent: list[str | None] = []  # what the last opcodes pushed, where it is a string
    memo: dict[int, str | None] = {}
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            kind = op.name
            if kind in ("PROTO", "FRAME", "STOP"):
                continue
            if kind == "MEMOIZE" or kind in _MEMO_PUTS:
                memo[len(memo) if kind == "MEMOIZE" else cast(int, arg)] = recent[-1] if recent else None
                continue
            found = None
            if kind == "GLOBAL":
                found = _global_name(*cast(str, arg).split(" ", 1))
            elif kind == "STACK_GLOBAL":
                if len(recent) < 2 or recent[-1] is None or recent[-2] is None:
                    raise Unsafe(member, "builds a global from computed names")
                found = _global_name(recent[-2], recent[-1])
            elif kind in _CLASS_OPS:
                raise Unsafe(member, f"instantiates classes by name ({kind} opcode)")
            if found is not None and found not in allowed:
                raise Unsafe(member, f"would import {found} when unpickled (only tensors and containers are allowed)")
            value = memo.get(cast(int, arg)) if kind in _MEMO_GETS else arg if kind in _STRING_OPS else None
            recent = [*recent[-1:], value.decode("latin-1") if isinstance(value, bytes) else value]
    except Unsafe:
        raise
    except Exception as exc:  # noqa: BLE001 -- pickletools raises ValueError and others on a broken stream
        raise Unsafe(member, f"is not a valid pickle ({exc})") from None


# -- the program -----------------------------------------------------------------------------------------------------


def _check_model(reader: Any, records: list[str], name: str) -> None:
    """One ``models/M.json`` and every member torch loads with it (the same names torch derives)."""
    model = name[len("models/") : -len(".json")]
    try:
        program = json.loads(_read(reader, name).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Unsafe(name, f"is not the JSON of a program ({exc})") from None
    check_program(program, name)
    _check_blob(_read(reader, f"data/sample_inputs/{model}.pt"), f"data/sample_inputs/{model}.pt")
    for folder, kind in (("data/weights/", "weights"), ("data/constants/", "constants")):
        legacy = f"{folder}{model}.pt"
        if legacy in records:
            _check_blob(_read(reader, legacy), legacy)
        else:
            _check_payloads(reader, f"{folder}{model}_{kind}_config.json", folder)


def _check_payloads(reader: Any, config_name: str, folder: str) -> None:
    try:
        config = json.loads(_read(reader, config_name).decode("utf-8"))["config"]
        entries = list(config.items())
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise Unsafe(config_name, f"is not a payload config ({exc})") from None
    for fqn, meta in entries:
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            raise Unsafe(config_name, f"describes {fqn!r} without a path")
        if not isinstance(fqn, str) or not SAFE_TEXT.fullmatch(fqn):
            raise Unsafe(config_name, f"names a tensor {str(fqn)[:40]!r} with quotes or control characters")
        file = meta["path_name"]
        member = os.path.join(folder, file)
        if folder == "data/constants/" and not file.startswith("tensor_"):
            raise Unsafe(member, "is a pickled Python or TorchScript object, not a tensor")
        if meta.get("use_pickle"):
            _check_blob(_read(reader, member), member)
        elif _record_size(reader, member) == 0 and _declared_numel(meta) > 1:
            raise Unsafe(member, "is empty but declares a tensor with elements (torch would allocate them)")


def _record_size(reader: Any, member: str) -> int | None:
    try:
        return reader.get_record_size(member)
    except Exception:  # noqa: BLE001 -- a missing record: torch's own load fails on it
        return None


def _declared_numel(meta: dict[str, Any]) -> int:
    numel = 1
    for dim in (meta.get("tensor_meta") or {}).get("sizes") or []:
        value = dim.get("as_int") if isinstance(dim, dict) else None
        if not isinstance(value, int):
            return 2  # symbolic or malformed: not a zero-element tensor
        numel *= value
    return numel
