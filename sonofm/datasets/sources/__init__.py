"""Sources: what a collection holds on disk, read into records ``{image, mask?, meta}``.

``adapters/`` has one adapter per layout (BUSI, CCA, POCUS, HC18, image folder, CSV manifest,
DICOM, the synthetic corpus), registered in ``adapters/__init__.py``; a new layout goes there.
Decoding lives beside them: ``imageio`` (image files and masks), ``dicom_io`` (DICOM pixels, the
Ultrasound Regions, spacing), ``video`` (cine loops sampled to frames). ``records`` defines the
record and its metadata keys; ``specs`` parses ``--source ADAPTER:PATH?opt=v`` into a
:class:`~sonofm.datasets.sources.specs.SourceSpec`. Nothing here knows about shards.
"""
