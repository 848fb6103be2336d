"""The shard format: names (``names``), writing (``writer``), reading and decoding samples
(``reader``), the per-source index (``index``), which shards a set holds (``discovery``) and
contact sheets and summaries of a shard folder (``inspect``).

Each of those modules owns one part of the format; this package gathers their public names, so
callers need not know the split. A new per-sample field is written in ``writer`` and read in
``reader``; a new index entry in ``index``.
"""

from __future__ import annotations

from sonofm.datasets.shards.index import (
    entry_file,
    index_files,
    index_shards,
    is_url,
    load_indexes,
    read_index,
    write_json_atomic,
)
from sonofm.datasets.shards.names import (
    INDEX_SUFFIX,
    INDEX_VERSION,
    NAME_RE,
    PROGRESS_SUFFIX,
    SPLIT_RE,
    base_key,
    check_source_name,
    check_split_name,
    index_path,
    member_name,
    progress_path,
    sample_key,
    shard_name,
    shard_pattern,
    split_member_name,
    tmp_path,
)
from sonofm.datasets.shards.reader import (
    CORRUPT_KINDS,
    CorruptCounter,
    CorruptSample,
    DecodedSample,
    ShardReadError,
    count_samples,
    decode_png,
    decode_sample,
    iter_tar_samples,
)
from sonofm.datasets.shards.writer import (
    EncodedSample,
    OutputError,
    ResumeMismatch,
    ShardSetWriter,
    TarShard,
    encode_png,
    file_sha256,
    keys_sha256,
    output_error,
    sample_meta,
)

__all__ = [
    "CORRUPT_KINDS", "INDEX_SUFFIX", "INDEX_VERSION", "NAME_RE", "PROGRESS_SUFFIX", "SPLIT_RE",
    "CorruptCounter", "CorruptSample", "DecodedSample", "EncodedSample", "OutputError", "ResumeMismatch",
    "ShardReadError", "ShardSetWriter", "TarShard",
    "base_key", "check_source_name", "check_split_name", "count_samples", "decode_png", "decode_sample",
    "encode_png", "entry_file", "file_sha256", "index_files", "index_path", "index_shards", "is_url",
    "iter_tar_samples", "keys_sha256", "load_indexes", "member_name", "output_error", "progress_path",
    "read_index", "sample_key", "sample_meta", "shard_name", "shard_pattern",
    "split_member_name", "tmp_path", "write_json_atomic",
]
