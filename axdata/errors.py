"""The exceptions that are a user's problem, phrased for the user (the bottom layer: every package raises them).

`axbench` prints an `AxbenchError` (or an `OSError`: a missing file, a refused connection) as one line and exits
1 — 2 for a `SettingsError`, a usage error. Any other exception is a defect of ours: the CLI says so and shows the
traceback to report. So raise an `AxbenchError` subclass where the cause is the input, a service or the machine,
with the message a user needs (the input, the problem, the fix); let everything else propagate.

The metric math (`axeval.detection`, `axeval.steering`, `axeval.stats`, `axeval.protocol`) raises plain
`ValueError` for bad input instead — it is copied into metric Spaces that run without this package — and the
commands that feed it user files translate at that boundary.
"""


class AxbenchError(Exception):
    """A problem with the user's input, a service or the machine; the message says what to do."""


class InputError(AxbenchError, ValueError):
    """A file, dataset, setting or argument that cannot be used as given (a `ValueError`, as Python's own)."""


class OutputExistsError(InputError, FileExistsError):
    """A command would write its result over an existing one; writers never clobber without `--overwrite`
    (a `FileExistsError` too, as Python's own)."""
