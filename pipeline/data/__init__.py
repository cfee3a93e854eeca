"""Loading: a dataset's shards → multi-view clips on the training device (``make_loader``)."""
