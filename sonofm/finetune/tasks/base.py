"""The task-kind interface and its table (timm's ``register_model`` pattern: one decorator, no if/else)."""

from __future__ import annotations

import abc
import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from sonofm.datasets.preprocess.geometry import Affine, original_from_stored
from sonofm.errors import UnknownNameError

__all__ = ["TASK_KINDS", "TaskKind", "get_task_kind", "guess_task_kind", "register_task", "to_original", "views"]

#: kind name -> the kind (one instance each)
TASK_KINDS: dict[str, TaskKind] = {}
_ALIASES: dict[str, str] = {}


def register_task(cls: type[TaskKind]) -> type[TaskKind]:
    """Class decorator: put one instance of the kind in :data:`TASK_KINDS` under its name and aliases."""
    keys = (cls.name, *cls.aliases)
    for key in keys:
        if key in _ALIASES:
            raise ValueError(f"task kind name {key!r} is registered twice")
    kind = cls()  # an abstract method left out is a TypeError here, at import
    _ALIASES.update(dict.fromkeys(keys, cls.name))
    TASK_KINDS[cls.name] = kind
    return cls


def get_task_kind(name: str | TaskKind) -> TaskKind:
    """The kind called ``name`` (or one of its aliases, e.g. ``segmentation`` for ``seg``); an unknown
    name is an error listing the known ones."""
    if isinstance(name, TaskKind):
        return name
    key = _ALIASES.get(str(name))
    if key is None:
        known = sorted(_ALIASES)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownNameError(f"unknown task kind {name!r}{hint}; known: {', '.join(known)}")
    return TASK_KINDS[key]


def guess_task_kind(labelled: bool) -> TaskKind:
    """The kind a dataset that names none gets: the one that claims labelled (or unlabelled) data."""
    return next(k for k in TASK_KINDS.values() if k.default_for_labelled is labelled)


def views(batch: Mapping[str, Any]) -> list[Affine]:
    """Each sample's map from its stored pixels to its tensor's pixels (the stream's crop / flip / letterbox)."""
    return [Affine.from_list(v) for v in batch["view"].tolist()]


def to_original(stored: Mapping[str, Any]) -> Affine:
    """Map of one evaluated sample (a ``stored`` entry of an evaluation batch) from tensor pixels back
    to the original image's pixels: the evaluation letterbox undone, then the build's crop and resize."""
    return Affine.from_list(stored["view"]).inverse().then(original_from_stored(stored["meta"]))


class TaskKind(abc.ABC):
    """One kind of task. Subclasses set the class attributes and implement the methods.

    ``spec`` below is a :class:`sonofm.finetune.universal.TaskSpec` (name, num_classes, classes, ...).
    """

    name: ClassVar[str]  # short name: the prompt's task token and the head's
    title: ClassVar[str]  # what people call it; also an alias
    aliases: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str]  # the metric that picks the best checkpoint
    higher_is_better: ClassVar[bool] = True
    #: prompt types it trains with (``whole`` always; see sonofm.finetune.prompt_types)
    prompt_types: ClassVar[tuple[str, ...]] = ("whole",)
    needs_mask: ClassVar[bool] = False  # a training sample without a mask is unusable
    uses_labels: ClassVar[bool] = False  # reads the class of ``meta["label"]``
    geometry: ClassVar[tuple[str, ...]] = ()  # metadata keys of targets in stored pixels
    flips: ClassVar[bool] = True  # a horizontal flip keeps the targets' meaning
    #: the kind a dataset without a named task gets when it is labelled (True) or not (False); None: never
    default_for_labelled: ClassVar[bool | None] = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "title" in cls.__dict__ and cls.title not in cls.aliases:
            cls.aliases = (*cls.aliases, cls.title)

    # --- what the data must hold -------------------------------------------------------------------

    def usable(self, meta: Mapping[str, Any], has_mask: bool) -> bool:
        """Whether one sample can train this kind (an unlabelled sample of a labelled task cannot)."""
        return has_mask or not self.needs_mask

    def num_classes(self, index_task: Mapping[str, Any] | None, labels: Sequence[str], default: int) -> int:
        """Outputs of the head: the index's task entry says, else what the data shows, else ``default``."""
        if index_task and index_task.get("num_classes"):
            return int(index_task["num_classes"])
        return len(labels) if self.uses_labels and labels else default

    def outputs_of(self, samples: Sequence[Any]) -> int:
        """Outputs of the head from in-memory samples (their masks and metadata)."""
        return self.num_classes(None, [], 2)

    def augment(self, aug: dict[str, Any]) -> dict[str, Any]:
        """The stream's augmentation settings for this kind (no flip where a flip would swap targets)."""
        return aug if self.flips else {**aug, "hflip": 0.0}

    # --- model ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def make_head(self, spec: Any, channels: int, num_features: int, dropout: float) -> nn.Module:
        """This kind's head for ``spec`` (from :mod:`sonofm.models.heads`)."""

    @abc.abstractmethod
    def loss(self, out: Any, batch: Mapping[str, Any], spec: Any, settings: Any) -> Tensor:
        """Training loss of one batch (``batch``: image, mask, targets, view, on the model's device where tensors)."""

    # --- evaluation ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def evaluate(self, predict: Callable[[Tensor], Any], batches: Iterable[dict[str, Any]], spec: Any, *,
                 device: torch.device, accelerator: Any = None, overlay_dir: Any = None,
                 n_overlays: int = 0) -> dict[str, Any]:
        """Metrics over evaluation batches (``image`` + ``stored``), gathered across ranks; holds ``headline``."""

    def score(self, metrics: Mapping[str, Any]) -> float:
        """A higher-is-better number in [0, 1] from :meth:`evaluate`'s metrics, to pick the best checkpoint."""
        return float(metrics[self.headline])

    # --- prediction -------------------------------------------------------------------------------

    @abc.abstractmethod
    def predict(self, out: Any, j: int, stored: Mapping[str, Any], spec: Any) -> Any:
        """Sample ``j`` of a batch's output, in the original image's pixels (its shape: the kind's)."""

    @abc.abstractmethod
    def write(self, writer: Any, row: Mapping[str, Any], prediction: Any) -> None:
        """Put one prediction in the challenge's prediction files (``row``: the sample's metadata)."""


def mean_or_nan(values: Sequence[float]) -> float:
    vals = [v for v in values if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")
