"""The domain, in packages by concern; none of them imports api/ or worker/.

core (settings, vocabulary, Redis key names and clients) < catalog (workloads, pools) <
broker (Celery and its transport) < jobs (record, store, submission) < lab
(experiments); cli and devstack stand apart and import core only. pyproject.toml holds
the import-linter contracts that enforce this order.
"""
