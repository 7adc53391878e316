"""``make demo``: an embedded cohort with planted labels, run through every stage end to end."""
