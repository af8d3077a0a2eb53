"""The one exception for problems with a user's data: a missing, corrupt or inconsistent dataset."""


class DatasetError(Exception):
    """A dataset file is missing, unreadable or inconsistent; the message names the file, the field and
    what to do."""
