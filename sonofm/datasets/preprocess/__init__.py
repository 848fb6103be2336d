"""Preprocessing, done once per image at shard time: a record in, a clean grayscale sample out.

``pipeline`` is the per-image path (grayscale, colour and marks blanked, crop to the acoustic
field, resize) and calls the steps: ``field`` (detecting the fan or rectangle that holds the
image), ``overlays`` (colour flow, coloured marks, text inside the field). ``dedup`` holds the
perceptual hashes the build uses to drop near-duplicates. A new step is a function here, called
from ``pipeline.preprocess``; what it finds goes into the sample's metadata.
"""
