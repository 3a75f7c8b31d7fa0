"""`python -m services.devstack` is `make run`."""

from services.devstack.run import main

main()
