"""Every exception uidprobe raises, under one base class.

``except uidprobe.UidprobeError`` catches them all.  Where an error is also a
familiar builtin kind (bad input is a ValueError, a file that cannot be
written an OSError), it inherits that too, so callers' existing ``except``
clauses keep working (psutil and pynacl do the same).
"""

from __future__ import annotations

__all__ = [
    "EngineError",
    "InvalidTargetError",
    "ModelError",
    "NoMechanismError",
    "PrivilegeError",
    "StoreError",
    "UidprobeError",
    "UsageError",
    "VerificationError",
    "WriteError",
]


class UidprobeError(Exception):
    """Base class of every error uidprobe raises."""


class UsageError(UidprobeError, ValueError):
    """Bad input from the user: the CLI prints one line and exits 64."""


class EngineError(UidprobeError, OSError):
    """The engine could not be used at all (no runner where one was required)."""


class WriteError(UidprobeError, OSError):
    """A file was not written: the message is one line saying why, naming the
    component that failed the safe-file rule (CLI exit 73)."""


class StoreError(WriteError):
    """The store could not be written."""


class ModelError(UidprobeError, ValueError):
    """A model file is not a model of this schema."""


class PrivilegeError(UidprobeError):
    """An identity change was refused or went wrong."""


class InvalidTargetError(PrivilegeError, ValueError):
    """A target id or group list is unusable; nothing was changed."""


class NoMechanismError(PrivilegeError):
    """No mechanism can switch and come back here; nothing was changed."""


class VerificationError(PrivilegeError):
    """A call failed, or the ids read back after it are not what they must be."""
