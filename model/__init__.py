"""The MAE-ST model: tubelet embedding, masking, visible-token ViT encoder, light decoder (issue 4).

So far: ``model.attention`` (the one attention function and its backends) and ``model.masking`` (the masking
strategies).
"""
