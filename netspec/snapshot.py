"""Snapshots: `<prefix>_iter_<N>.pt` with the weights, the solver's history, the random-number states,
the data positions and the iteration, written atomically, checksummed, and read without unpickling
arbitrary objects. Beside the weights: the data layers' preprocessing statistics (`statistics`, by data
top) and the data tops' shapes (`inputs`), so that the model is tested and exported as it was trained;
snapshots written before these were stored load too (the statistics then come from the source again).

A snapshot is a plain dict of tensors, numbers, strings, lists and dicts saved with torch.save and read
with torch.load(weights_only=True), which refuses anything else. torch's zip container does not verify
what it reads (a flipped byte in tensor data loads as a different weight), so the dict carries a SHA-256
of its whole contents (every tensor's dtype, shape and bytes, and every other value), checked on load:
a damaged file is refused, never resumed. Format version 1 had no checksum and is refused too.
It is written to a temporary file in the same folder, flushed to disk and renamed over the target, so a
crash (even kill -9) leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from netspec.errors import WeightsError
from netspec.files import checked

FORMAT = "netspec-snapshot"
VERSION = 2  # 2: with a checksum


def checksum(obj: Any) -> str:
    """SHA-256 of a snapshot's contents, independent of how torch laid them out in the file."""
    h = hashlib.sha256()
    _feed(h, obj)
    return "sha256:" + h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, list | tuple):
        h.update(f"{type(obj).__name__}{len(obj)};".encode())
        for item in obj:
            _feed(h, item)
    else:  # str, int, float, bool, None: repr is exact (floats round-trip)
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """torch.save (with the checksum added) to a temporary file beside `path`, fsync, then rename."""
    obj = {**obj, "checksum": checksum(obj)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(blobs: dict[str, list[torch.Tensor]], path: str | Path) -> None:
    """A weights-only snapshot (what `netspec import` writes): loads with --weights, not --resume."""
    save_atomic(
        {
            "format": FORMAT,
            "version": VERSION,
            "blobs": {k: [t.detach().cpu().clone() for t in v] for k, v in blobs.items()},
        },
        path,
    )


def remove_leftovers(folder: Path) -> None:
    """Deletes temporary files a killed run left behind (the snapshots themselves are always whole)."""
    for tmp in folder.glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)


def load(path: str | Path) -> dict[str, Any]:
    """A snapshot's contents; WeightsError if the file is missing, damaged or not a netspec snapshot."""
    path = checked(path, "snapshot", error=WeightsError)
    hint = "the file is damaged or was not written by netspec"
    try:
        with warnings.catch_warnings():  # a damaged pickle header makes torch warn before it fails
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"'{path}' is not a readable netspec snapshot ({first[:160]})", hint=hint) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise WeightsError(f"'{path}' is not a netspec snapshot", hint="netspec writes *_iter_N.pt snapshots")
    saved = obj.pop("checksum", None)
    try:
        actual = checksum(obj)
    except Exception:  # a damaged file can hold values the checksum cannot walk (odd tensor layouts)
        actual = None
    if saved is None and obj.get("version") == 1:
        raise WeightsError(
            f"snapshot '{path}' has no checksum (format version 1, written by an older netspec); "
            f"this netspec reads version {VERSION}",
            hint="its weights are torch.load(path, weights_only=True)['blobs']; "
            "netspec.snapshot.save_weights writes them in the current format",
        )
    if actual is None or saved != actual:
        raise WeightsError(
            f"snapshot '{path}' is damaged: its contents do not match their checksum",
            hint="it changed after netspec wrote it; use an earlier snapshot",
        )
    if obj.get("version") != VERSION:
        raise WeightsError(f"snapshot '{path}' has format version {obj.get('version')}; this netspec reads {VERSION}")
    return obj


def check_layout(path: str | Path, saved: dict[str, list[int]], expected: dict[str, tuple[int, ...]]) -> None:
    """Refuses a snapshot whose parameter blobs are not the net's (names and shapes)."""
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    wrong = [
        f"{k}: {tuple(saved[k])} in the snapshot, {expected[k]} in the net"
        for k in expected
        if k in saved and tuple(saved[k]) != expected[k]
    ]
    if missing or extra or wrong:
        parts = []
        if wrong:
            parts.append("shapes differ: " + "; ".join(wrong[:3]))
        if missing:
            parts.append("not in the snapshot: " + ", ".join(missing[:5]))
        if extra:
            parts.append("not in the net: " + ", ".join(extra[:5]))
        raise WeightsError(
            f"snapshot '{path}' does not match the net (" + "; ".join(parts) + ")",
            hint="resume with the spec the snapshot was trained with",
        )
