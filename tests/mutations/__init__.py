"""The mutation gate: every promised mechanism, broken on purpose, must fail a named test.

`catalog.py` lists the mutations (each a small patch naming the promise it breaks and
the tests that must catch it); `python -m tests.mutations` applies each to a throwaway
copy of the project, never to the project itself, runs those tests there and fails if a
mutation survives (docs/guarantees.md shows the table of a run).
"""
