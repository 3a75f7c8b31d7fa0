"""What a job can run and where: the workload catalog and the pools, as data."""
