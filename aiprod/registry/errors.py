"""What the registry refuses: one RegistryError subclass per kind, each message saying what and why."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """Anything the registry refuses, with a message that says what and why."""


class VersionNameError(RegistryError, ValueError):
    pass


class VersionExistsError(RegistryError):
    pass


class VersionNotFoundError(RegistryError):
    pass


class GateError(RegistryError):
    """Promotion refused: the version's eval report fails the release gates."""


class IntegrityError(RegistryError):
    """Files do not match their manifest."""


class RegistryLockedError(RegistryError):
    pass
