"""Loading and training: shards → multi-view clips on the training device (the loader arrives with issue 3)."""
