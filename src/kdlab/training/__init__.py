"""Training of runs: ``run`` (one run end to end), ``loop`` (an epoch, evaluation, stage
hooks), ``state`` (what a checkpoint holds), ``guards`` (stop signals, non-finite losses,
skipped steps), ``device`` (device, precision, seeding)."""
