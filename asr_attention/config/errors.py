"""Errors the user can fix from the message alone: a config value, a file, the data, a run folder.

Their message names the field or file and what to do. The train entry prints such an error in one line (exit
status 1) instead of a traceback through the framework; a failed run's results.json still keeps the traceback.
"""


class UserError(Exception):
    """Raised with one short message naming the config field or file, and what to do about it."""
