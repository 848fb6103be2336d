"""Streaming shards into batches: ``loader`` (mixing of shard sets, resampled rounds, exact resume,
the exactly-once evaluation stream) and ``augment`` (crop inside the acoustic field, flips, gamma,
gain). A new augmentation goes in ``augment``; the stream only reads what ``shards`` defines.
"""
