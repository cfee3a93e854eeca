"""From shards to a trained model: ``data`` (loading), ``train`` (DeepSpeed training), ``evaluate`` (scoring)."""
