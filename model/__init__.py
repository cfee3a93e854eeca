"""The MAE-ST model: tubelet embedding, masking, visible-token ViT encoder, light decoder (issue 4).

So far: ``model.attention`` (the one attention function and its backends), ``model.masking`` (the masking
strategies) and ``model.embed`` (tubelet embedding, separable learned or sin-cos positions).
"""
