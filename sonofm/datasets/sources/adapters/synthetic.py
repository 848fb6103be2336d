"""The built-in synthetic corpus (``sonofm.datasets.synthetic``), read through its manifest.

``generate_corpus`` writes ``OUT/manifest.csv`` (``path,mask,label,organ,region,source,group,probe,
pixel_spacing_mm``) with PNG images and 0/255 masks; this is the CSV adapter with each row's
``source`` honoured (one corpus holds several synthetic sources) and masks binarised to class 1.
"""

from __future__ import annotations

from sonofm.datasets.sources.adapters.csv_manifest import CsvAdapter


class SyntheticAdapter(CsvAdapter):
    """``root`` is the corpus folder (holding ``manifest.csv``) or the manifest itself."""

    name = "synthetic"

    def _default_source(self) -> str | None:
        return self.source
