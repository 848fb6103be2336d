"""``model.py`` for the FM_UIA 2026 challenge container: ``Model().predict(data_root, output_dir, batch_size)``.

Copy a finished ``sonofm finetune universal`` run into the image (its ``best/`` folder is enough) and
point ``SONOFM_RUN`` at it (default ``/workspace/run``); install sonofm in the image. The challenge runs
``Model().predict("/input", "/output", batch_size)``: every image of the root is preprocessed as the
build did, predicted, mapped back to its original pixels and written in the challenge's files.
"""

from __future__ import annotations

import os
from typing import Any

from sonofm.finetune.predict import predict_source

RUN = os.environ.get("SONOFM_RUN", "/workspace/run")


class Model:
    def __init__(self, run: str = RUN, device: str | None = None) -> None:
        self.run, self.device = run, device

    def predict(self, data_root: str = "/input", output_dir: str = "/output", batch_size: int = 16) -> dict[str, Any]:
        return predict_source(self.run, f"fmuia:{data_root}", output_dir, batch_size=batch_size, device=self.device,
                              progress=False)


if __name__ == "__main__":
    Model().predict()
