"""Example jobrunner workloads on text; the workloads themselves are in textjobs.jobs."""
