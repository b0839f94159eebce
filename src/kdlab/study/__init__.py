"""A study: the study file and its grid, each run's progress, packs, the queue's decisions,
the status table and the summaries over seeds."""
