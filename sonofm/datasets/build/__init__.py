"""The shard build: sources → preprocess → split → shard writer, per source, resumable.

``orchestrate`` runs a build (``build_shards``) and writes its report and each source's index;
``workers`` decode and preprocess items in several processes; ``progress`` records finished shards
so a killed build resumes; ``splits`` assigns a split by a hash of the group; ``pseudonyms`` keys
patient and path identifiers before they reach metadata. A new counter in the build report goes in
``orchestrate``'s tally.
"""
