"""Data in: the DIAS release reader, the synthetic DSA generator, scribbles, preprocessing, shards, loaders.

Modules (import them directly; nothing heavy is imported here):
  dias        read the DIAS release layout (``list_sequences``, ``read_sequence``, ``read_split``)
  phantom     synthetic DSA sequences written in the release layout
  scribbles   RDFA (skeleton + random walk) and SALE-like scribble generators
  preprocess  time resampling to T=8 and per-sequence z-score
  shards      WebDataset tar shards + manifest (writer; readers chosen by location in ``open_shard``)
  location    where a shard set lives: folder or URL (http(s), s3, gs, file, pipe:), opened through WebDataset
  loader      training patch stream and evaluation sequence stream
  augment     DIAS weak augmentation (flips + rot90 of image and maps together)
"""
