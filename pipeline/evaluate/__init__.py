"""Evaluation: the multi-view test, linear probe, features, and pictures of a pretrained model."""
