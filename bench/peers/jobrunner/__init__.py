"""jobrunner itself, through its HTTP API: a `POST /jobs` a job on one kept-alive
connection, `jobrunner.Client.submit`, or `POST /jobs/batch` (1,000 a request)."""
