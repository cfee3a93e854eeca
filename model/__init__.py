"""The MAE-ST model: tubelet embedding, masking, visible-token ViT encoder, light decoder (issue 4).

``model.mae`` holds the autoencoder, its presets (tiny, vit-s/b/l/h) and the fine-tuning classifier;
``model.attention`` the one attention function and its backends; ``model.masking`` the masking strategies;
``model.embed`` the tubelet embedding and the positions.
"""
