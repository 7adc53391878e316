"""Whole-slide reading, tissue masks and tiling."""

from hipt.slides.readers import READERS, SlideReader, open_slide

__all__ = ["READERS", "SlideReader", "open_slide"]
