"""The command line, source scanning, series grouping into jobs, and (with the fleet) enqueueing."""
