"""What an HTTP function answers, before any host sees it: a status, a JSON body (None for the
vendors that answer with an empty one; bytes for a format's own encoding, such as OTLP's protobuf
answers, its Content-Type among the headers) and headers. Shared by every request handler."""
from __future__ import annotations

from dataclasses import dataclass, field

RETRY_AFTER_SECONDS = 30  # what a 503 asks the sender to wait before sending again


@dataclass
class Reply:
    status: int
    body: dict | bytes | None
    headers: dict[str, str] = field(default_factory=dict)
