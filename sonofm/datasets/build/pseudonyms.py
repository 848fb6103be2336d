"""Pseudonyms for what in shard metadata could identify a patient: file paths and group ids.

Hospital exports name folders and files after patients ("DOE^JANE/20230412/IM_0001.dcm") and
manifests carry medical record numbers as the group. A pseudonymised source stores neither in
clear: ``path`` becomes ``file-<16 hex>`` (plus the extension) and ``group`` becomes
``group-<16 hex>``, keyed hashes (HMAC-SHA256) that keep equality (group-aware splits and
cross-validation still work) but not the value. The key is ``$SONOFM_PSEUDONYM_KEY`` when set, else
the build's split salt: with the default salt anyone holding a candidate ID can test it (a
record number space is small), so set a secret key for data that leaves the hospital, and keep it
to map pseudonyms back. The sample key is made from the pseudonymised path, so it reveals nothing
either; the shard index keeps only pseudonymised file names in its report.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import PurePosixPath
from typing import Any

ENV_KEY = "SONOFM_PSEUDONYM_KEY"
#: Adapters whose paths and groups come from the user's own data (named public layouts do not).
DEFAULT_ON = frozenset({"dicom", "folder", "csv"})


def pseudonym_key(salt: str) -> bytes:
    """The HMAC key: ``$SONOFM_PSEUDONYM_KEY``, else the build salt."""
    return (os.environ.get(ENV_KEY) or salt).encode()


def key_fingerprint(key: bytes) -> str:
    """A digest of the key for the build fingerprint (a new key rebuilds; the key is not stored)."""
    return hmac.new(key, b"sonofm-pseudonym-key", hashlib.sha256).hexdigest()[:16]


def pseudonym(kind: str, value: str, key: bytes) -> str:
    """``{kind}-{16 hex}``: stable for one key, the same for equal values, not reversible without the key."""
    return f"{kind}-{hmac.new(key, f'{kind}:{value}'.encode(), hashlib.sha256).hexdigest()[:16]}"


def pseudonymous_path(path: str, key: bytes) -> str:
    """``file-<hex>.ext``: the extension stays (it says how the file was decoded), nothing else."""
    return pseudonym("file", path, key) + PurePosixPath(path).suffix.lower()


def pseudonymise_meta(meta: dict[str, Any], key: bytes) -> dict[str, Any]:
    """A copy of sample metadata with ``path`` and ``group`` replaced by their pseudonyms."""
    out = dict(meta)
    if out.get("path"):
        out["path"] = pseudonymous_path(str(out["path"]), key)
    if out.get("group") not in (None, ""):
        out["group"] = pseudonym("group", str(out["group"]), key)
    return out


def scrub_report(report: dict[str, Any], key: bytes) -> dict[str, Any]:
    """The build report as a pseudonymised source's index stores it: the same counts, files named by
    their pseudonyms and reasons reduced to the error type (their text quotes the path)."""
    out = dict(report)
    out["root"] = None
    out["errors"] = [{"file": pseudonymous_path(e["file"], key), "reason": e["reason"].split(":", 1)[0]}
                     for e in report.get("errors", [])]
    out["duplicates"] = [{**d, "dropped": _hash_where(d["dropped"], key)} for d in report.get("duplicates", [])]
    out["skipped_files"] = [{**n, "file": _hash_where(n["file"], key), "reason": n.get("counter", "skipped")}
                            for n in report.get("skipped_files", [])]
    return out


def _hash_where(where: str, key: bytes) -> str:
    path, sep, frame = str(where).partition("#")
    return pseudonymous_path(path, key) + (f"#{frame}" if sep else "")
