"""Hierarchical DINO pretraining of ViT-256 (patches) and ViT-4K (feature grids) with lightly."""
