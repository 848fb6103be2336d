"""The data path, one sub-package per stage, each importing only the ones before it:

```
sources/      adapters (one per on-disk layout), DICOM / image / video decoding, records, --source specs
   ↓
preprocess/   per-image pipeline: grayscale, colour and overlays, acoustic field, crop, resize; dedup
   ↓
shards/       the shard format: names, writer, reader, index, discovery, inspection
   ↓
build/        orchestration of a build: workers, progress and resume, splits, pseudonyms
stream/       training and evaluation batches streamed from shards, augmentation
```

``taxonomy`` (region → organ → source, read by every stage) and ``synthetic/`` (the built-in
corpus the quickstart generates, written as an ordinary CSV source) sit beside them.

Where a new thing goes: an on-disk layout is an adapter in ``sources/adapters/`` registered in its
``__init__``; a preprocessing step is a function in ``preprocess/`` called by
``preprocess/pipeline.py``; a new per-sample field is written in ``shards/writer.py`` and read in
``shards/reader.py``.

The public names below load lazily, so ``import sonofm.datasets`` costs nothing and a command
that fails early never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["ADAPTERS", "Adapter", "AdapterError", "get_adapter"], "sonofm.datasets.sources.adapters"),
    **dict.fromkeys(["Record"], "sonofm.datasets.sources.records"),
    **dict.fromkeys(["SourceSpec", "BadSpecError", "parse_source_arg", "parse_sources", "make_adapter"],
                    "sonofm.datasets.sources.specs"),
    **dict.fromkeys(["preprocess", "Processed"], "sonofm.datasets.preprocess.pipeline"),
    **dict.fromkeys(["Field", "detect_field", "detect_clip_field"], "sonofm.datasets.preprocess.field"),
    **dict.fromkeys(["build_shards", "check_output_dir", "EmptySourceError"], "sonofm.datasets.build.orchestrate"),
    **dict.fromkeys(["assign_split", "group_kfold", "stratified_group_kfold"], "sonofm.datasets.build.splits"),
    **dict.fromkeys(["ShardSetWriter", "load_indexes", "read_index", "decode_sample", "iter_tar_samples"],
                    "sonofm.datasets.shards"),
    **dict.fromkeys(["discover_shards", "shard_indexes", "StreamError"], "sonofm.datasets.shards.discovery"),
    **dict.fromkeys(["inspect_shards"], "sonofm.datasets.shards.inspect"),
    **dict.fromkeys(["StreamSpec", "make_train_loader", "make_eval_loader", "corrupt_counts"],
                    "sonofm.datasets.stream.loader"),
    **dict.fromkeys(["AugmentConfig"], "sonofm.datasets.stream.augment"),
    **dict.fromkeys(["Taxonomy", "SourceInfo", "TaxonomyError"], "sonofm.datasets.taxonomy"),
    **dict.fromkeys(["generate_corpus"], "sonofm.datasets.synthetic"),
}

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AdapterError",
    "AugmentConfig",
    "BadSpecError",
    "EmptySourceError",
    "Field",
    "Processed",
    "Record",
    "ShardSetWriter",
    "SourceInfo",
    "SourceSpec",
    "StreamError",
    "StreamSpec",
    "Taxonomy",
    "TaxonomyError",
    "assign_split",
    "build_shards",
    "check_output_dir",
    "corrupt_counts",
    "decode_sample",
    "detect_clip_field",
    "detect_field",
    "discover_shards",
    "generate_corpus",
    "get_adapter",
    "group_kfold",
    "inspect_shards",
    "iter_tar_samples",
    "load_indexes",
    "make_adapter",
    "make_eval_loader",
    "make_train_loader",
    "parse_source_arg",
    "parse_sources",
    "preprocess",
    "read_index",
    "shard_indexes",
    "stratified_group_kfold",
]

if TYPE_CHECKING:  # what a type checker and an IDE see; at run time the names load on first use
    from sonofm.datasets.build.orchestrate import EmptySourceError, build_shards, check_output_dir
    from sonofm.datasets.build.splits import assign_split, group_kfold, stratified_group_kfold
    from sonofm.datasets.preprocess.field import Field, detect_clip_field, detect_field
    from sonofm.datasets.preprocess.pipeline import Processed, preprocess
    from sonofm.datasets.shards import (
        ShardSetWriter,
        decode_sample,
        iter_tar_samples,
        load_indexes,
        read_index,
    )
    from sonofm.datasets.shards.discovery import StreamError, discover_shards, shard_indexes
    from sonofm.datasets.shards.inspect import inspect_shards
    from sonofm.datasets.sources.adapters import ADAPTERS, Adapter, AdapterError, get_adapter
    from sonofm.datasets.sources.records import Record
    from sonofm.datasets.sources.specs import (
        BadSpecError,
        SourceSpec,
        make_adapter,
        parse_source_arg,
        parse_sources,
    )
    from sonofm.datasets.stream.augment import AugmentConfig
    from sonofm.datasets.stream.loader import StreamSpec, corrupt_counts, make_eval_loader, make_train_loader
    from sonofm.datasets.synthetic import generate_corpus
    from sonofm.datasets.taxonomy import SourceInfo, Taxonomy, TaxonomyError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sonofm.datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
