"""The MAE-ST model: tubelet embedding, masking, visible-token ViT encoder, light decoder.

``vmae.model.config`` holds the model's one config and its registries (presets, masking strategies, attention
backends, position embeddings, targets); ``vmae.model.mae`` the autoencoder and the fine-tuning classifier;
``vmae.model.attention`` the attention kernels; ``vmae.model.masking`` the masking strategies; ``vmae.model.embed``
the tubelet embedding and positions.
"""
