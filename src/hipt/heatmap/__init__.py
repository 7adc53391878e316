"""The heatmap stage: factorized HIPT attention drawn over a slide (PNG, HTML, top-k crops)."""
