"""Loading: a dataset's shards → multi-view clips on the training device (``loader.make_loader``).

The modules, in the order data flows through them:
- ``config``: the sampling spec and loader options (``DataConfig``); ``backends``: the registries of loader
  backends and CPU decoders, by name (read by the config without importing them);
- ``shardset`` (the dataset's shard table, each rank's part of an epoch) and ``remote`` (shards staged over HTTP);
- ``sampling``: which frames and crops each of a video's K views takes;
- ``protocol``: what every loader backend is (``Loader``) and yields (``Batch``); ``loader``: ``make_loader``;
- the CPU path: ``cpu_loader`` (the loader and its DataLoader) → ``sample_reader`` (read, decode, cut a sample in
  a worker) → ``decode`` (the CPU decoders) and ``views`` (crops); ``batch_pool`` (batch memory shared with the
  workers) and ``workers`` (their start, the watch on what each is loading, their kill);
- the DALI path: ``dali_loader`` (several pipelines per rank, with the per-sample error handling DALI lacks) →
  ``dali_graph``; ``tickets`` (which batch each producer makes next, and the in-order merge); ``hybrid_loader``
  (DALI pipelines and CPU workers in one stream);
- ``stats`` (what a loader did) and ``check`` (`vmae loader-check`).
"""
