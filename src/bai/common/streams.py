"""Keep-alives of the manager's long streams, shared by the manager and the client.

The manager writes something on every stream at least every ``KEEPALIVE_SECONDS``: an SSE
comment (``: keep-alive``) on the event stream, a WebSocket ping on an execution stream. A
client therefore treats ``BAI_READ_TIMEOUT`` of silence on a stream (60 s by default: four
missed keep-alives) as a stalled manager. A download is one tar stream that cannot carry
keep-alives: once its head came, the agent sends without pause, so the same silence limit
applies to its body.
"""

from __future__ import annotations

#: seconds between keep-alives the manager sends on an otherwise silent stream
KEEPALIVE_SECONDS = 15.0
