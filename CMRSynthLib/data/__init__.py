"""Data layer: volumes and their geometry, cohorts and cases, preprocessing, splits, the phantom cohort."""
