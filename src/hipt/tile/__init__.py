"""The tile stage: slides -> tissue mask -> 4096-px regions with 16x16 patch masks."""
