"""hipt: the Hierarchical Image Pyramid Transformer on whole-slide images, with Lightning."""

__version__ = "0.1.0"
