"""Task kinds: segmentation, classification, detection, keypoints, one module each, one table.

A kind owns everything that differs between tasks: its head (built from :mod:`sonofm.models.heads`),
its loss, its metrics, the geometry of its targets under the stream's crop, resize and flip, what
it reads from a sample's metadata, and how one prediction goes back to the original image and into
the challenge's prediction files. The loops (``sonofm.finetune.universal``, ``sonofm predict``) only
call a kind's methods and never test a kind's name (``tests/test_task_kinds.py`` holds that).

Adding a kind is a module with a :class:`~sonofm.finetune.tasks.base.TaskKind` subclass decorated
with :func:`register_task`, and one import line below.
"""

from __future__ import annotations

from sonofm.finetune.tasks import classification, detection, keypoints, segmentation  # noqa: F401, I001  (registers)
from sonofm.finetune.tasks.base import TASK_KINDS, TaskKind, get_task_kind, guess_task_kind, register_task

__all__ = ["TASK_KINDS", "TaskKind", "get_task_kind", "guess_task_kind", "register_task"]
