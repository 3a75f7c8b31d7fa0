"""The domain, in packages by concern; none of them imports api/ or worker/.

core (settings, vocabulary, Redis key names and clients) < catalog (workloads, pools) <
broker (Celery and its transport) < jobs (record, store, submission) < lab
(experiments); devstack (the local launcher) and cli (which may use it) stand apart and
import no server code. pyproject.toml holds the import-linter contracts that enforce
this order.
"""
