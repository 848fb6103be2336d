"""The shard format in one import: names (``shard_names``), writing (``shard_writer``), reading and
decoding samples (``shard_reader``) and the per-source index (``shard_index``).

Each of those modules owns one part of the format; this module only gathers their public names, so
callers need not know the split.
"""

from __future__ import annotations

from sonofm.datasets.shard_index import (
    entry_file,
    index_files,
    index_shards,
    is_url,
    load_indexes,
    read_index,
    write_json_atomic,
)
from sonofm.datasets.shard_names import (
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
    source_name_from_path,
    split_member_name,
    tmp_path,
)
from sonofm.datasets.shard_reader import (
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
from sonofm.datasets.shard_writer import (
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
    "read_index", "sample_key", "sample_meta", "shard_name", "shard_pattern", "source_name_from_path",
    "split_member_name", "tmp_path", "write_json_atomic",
]
