"""What every layer shares: settings, the words of the domain, Redis key names, ids, and
the one place Redis clients are built. Imports nothing else of jobrunner."""
