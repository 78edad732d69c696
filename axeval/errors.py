"""Which exceptions are a user's problem (bad input, a failed outside service), kept free of heavy imports so
the CLI can name them before it loads torch."""

# Already phrased for a user: the CLI prints them as one line; anything else is a defect of ours, reported
# with its type.
USER_ERRORS = (ValueError, LookupError, OSError, RuntimeError)
