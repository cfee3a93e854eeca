"""Training: the DeepSpeed engine, the loop shared by pretraining and fine-tuning, checkpoints and metrics."""
