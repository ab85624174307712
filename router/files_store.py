"""Files of the Files API (``/v1/files``): the File object, the store interface, and which store a config gets.

Every operation names the tenant; another tenant's file is as absent as one
that never existed. Content goes in and out as chunks (``AsyncIterable[bytes]``),
never as one buffer, so a store can stream it: the embedded store
(``router.files_store_local``) writes a local directory; the production store
(``router.files_store_s3``) an S3-compatible bucket (a multipart upload per
large ``create``, a streamed GET per ``content``, listing by a per-tenant key
prefix, metadata beside the object). ``router.state_batches.open_file_store``
picks one by ``state.files``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Literal, Protocol

import msgspec

from core.errors import GatewayError, NotFound

# What a client may upload; the *_output purposes are the gateway's own (batch results).
UPLOAD_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
PURPOSES = UPLOAD_PURPOSES | {"assistants_output", "batch_output", "fine-tune-results"}
# File ids are used as names on disk and in object keys: nothing else gets that far.
_FILE_ID = re.compile(r"^file-[A-Za-z0-9_-]{1,64}$")

Order = Literal["asc", "desc"]


class FileObject(msgspec.Struct, kw_only=True):
    """OpenAI's File object, as the SDK parses it."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileStoreUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "file_store_unavailable"
    retryable = True


def file_not_found(file_id: str) -> NotFound:
    # One wording for "absent", "expired" and "another tenant's".
    return NotFound(f"No such File object: {file_id[:80]}.", param="file_id", code="file_not_found")


def valid_file_id(file_id: str) -> bool:
    return _FILE_ID.match(file_id) is not None


class FileStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def create(
        self,
        tenant: str,
        *,
        filename: str,
        purpose: str,
        content: AsyncIterable[bytes],
        expires_at: int | None = None,
        file_id: str | None = None,
    ) -> FileObject:
        """Keep ``content`` as a new file (``file_id``: that id, replacing a file of the tenant's that has it).

        The file exists for readers once the call returns, never half-written;
        an exception raised by ``content`` leaves nothing behind.
        """
        ...

    async def get(self, tenant: str, file_id: str) -> FileObject | None:
        """The tenant's file; None when missing, expired or another tenant's."""
        ...

    async def page(self, tenant: str, *, purpose: str | None, after: str | None, limit: int, order: Order) -> tuple[list[FileObject], bool]:
        """A page of the tenant's files by creation time, after the file ``after``; and whether more follow."""
        ...

    def content(self, tenant: str, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes in chunks; raises ``NotFound`` (when iterated) if it is not the tenant's."""
        ...

    async def delete(self, tenant: str, file_id: str) -> bool:
        """Whether the tenant had that file (now gone)."""
        ...
