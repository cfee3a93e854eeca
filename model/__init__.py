"""The MAE-ST model: tubelet embedding, masking, visible-token ViT encoder, light decoder (issue 4)."""
