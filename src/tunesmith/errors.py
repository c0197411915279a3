"""Error types. Every user-facing failure derives from TunesmithError so the CLI can print one line."""


class TunesmithError(Exception):
    """Base class: a problem the user can fix (bad config, bad data, missing file)."""


class ConfigError(TunesmithError):
    """A config value is missing, unknown, of the wrong type or contradicts another."""


class DataError(TunesmithError):
    """A data file cannot be read or one of its records is malformed."""


class ModelLoadError(TunesmithError):
    """A base model cannot be found or loaded."""


class UnsupportedModuleError(TunesmithError):
    """A method was asked to wrap a module or architecture it does not support."""


class CheckpointError(TunesmithError):
    """A checkpoint or adapter file is missing, corrupt or does not fit the model."""


class TrainingError(TunesmithError):
    """Training cannot go on (for example the loss became NaN)."""
