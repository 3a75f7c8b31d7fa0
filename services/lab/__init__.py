"""The lab: one workload run on every pool and local executor, measured from the jobs' own
timestamps, explained in a verdict and drawn."""
