"""Exceptions for problems a user can fix. The CLI prints them as one line, without a traceback."""


class HPMError(Exception):
    """Bad input: an argument, a config file, a checkpoint, a dataset path."""


class OfflineError(HPMError):
    """A download was needed but the network (Hub, Google Drive, dataset host) is unreachable."""


class CheckpointError(HPMError):
    """A checkpoint directory is missing files, has wrong shapes or keys, or is not safetensors."""
