"""vmae: masked-autoencoder pretraining on video.

The repository's top-level folders are this package's parts, in the order the data flows:
``vmae.shards`` (videos → tar shards and the dataset format), ``vmae.pipeline.data`` (shards → multi-view clips),
``vmae.model`` (the MAE-ST model), ``vmae.pipeline.train`` (DeepSpeed training), ``vmae.pipeline.evaluate``
(fine-tuned and pretrained models scored and drawn) and ``vmae.tools`` (the ``vmae`` command and the profiler).
"""

__version__ = "0.1.0"
