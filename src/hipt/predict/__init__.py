"""The predict stage: trained slide models applied to a new cohort (external validation)."""
