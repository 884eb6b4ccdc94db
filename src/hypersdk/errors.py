"""The one exception tree of HyperSDK.

Every error a user can cause or meet is one of these; the CLI prints ``str(err)`` as one
line and exits with ``err.exit_code``, the daemon answers ``{"error": {"code", "message"}}``
with ``err.http_status``. Vendor exceptions (pyVmomi, QMP, OSError from sockets) are
translated into these at the boundary, chained with ``from``. docs/errors.md is the
table users read; a test checks that it matches these classes.

    HyperSDKError                      exit 1, HTTP 500
    ├── UsageError                     exit 2, HTTP 422  bad flag or field value
    │   ├── ForbiddenPath                       HTTP 403  a path outside the allowed folders
    │   └── PasswordError                        HTTP 422  an encrypted repository's password
    │                                                      is missing or wrong
    ├── NotFoundError                  exit 2, HTTP 404  no such VM, image, socket, repository,
    │                                                    generation, disk or job
    ├── ConflictError                  exit 1, HTTP 409  something else holds the resource
    │   └── LockedError                                  another writer holds the VM's lock
    ├── RepositoryError                exit 1, HTTP 500  the repository cannot be used
    │   └── IntegrityError                     HTTP 409  stored data fails its checks (damaged)
    ├── ProviderError                  exit 1, HTTP 502  the hypervisor failed or refused
    │   ├── ConnectionFailed                             cannot reach the hypervisor
    │   ├── CbtUnavailable                               tracking cannot be used for this disk
    │   └── ChangeIdInvalid                              the previous change id is not known
    ├── NbdError                       exit 1, HTTP 502  NBD protocol or server error
    └── ExportCancelled                exit 130, HTTP 409 the user stopped the export
"""

from __future__ import annotations


class HyperSDKError(Exception):
    """Base of every HyperSDK error."""

    exit_code = 1
    http_status = 500
    code = "internal_error"


class UsageError(HyperSDKError):
    exit_code = 2
    http_status = 422
    code = "invalid_argument"


class ForbiddenPath(UsageError):
    """A request names a path outside the allowed folders (or a kind of file that the
    daemon does not touch)."""

    http_status = 403
    code = "forbidden_path"


class PasswordError(UsageError):
    """An encrypted repository was opened without its password, or with a wrong one."""

    code = "password_error"


class NotFoundError(HyperSDKError):
    exit_code = 2
    http_status = 404
    code = "not_found"


class ConflictError(HyperSDKError):
    http_status = 409
    code = "conflict"


class LockedError(ConflictError):
    code = "locked"


class RepositoryError(HyperSDKError):
    code = "repository_error"


class IntegrityError(RepositoryError):
    # The repository holds the thing asked for, but damaged: a conflict with its state,
    # not a failure of the daemon (never a 500).
    http_status = 409
    code = "integrity_error"


class ProviderError(HyperSDKError):
    http_status = 502
    code = "provider_error"


class ConnectionFailed(ProviderError):
    code = "connection_failed"


class CbtUnavailable(ProviderError):
    code = "cbt_unavailable"


class ChangeIdInvalid(ProviderError):
    code = "change_id_invalid"


class NbdError(HyperSDKError):
    http_status = 502
    code = "nbd_error"


class ExportCancelled(HyperSDKError):
    exit_code = 130
    http_status = 409
    code = "cancelled"
