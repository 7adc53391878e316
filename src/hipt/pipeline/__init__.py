"""``make pipeline``: a user's cohort through every stage, ordered by what each reads and writes."""
