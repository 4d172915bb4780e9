"""Secrets out of the server log: bearer tokens, `?token=` / `?cancel_token=` query values.

`install_log_redaction()` wraps the logging record factory once per process, so every
record, whichever logger made it (tornado.access logging a failed WebSocket handshake's
URL, tornado.general, ours), reaches handlers with its secrets replaced by `<redacted>`.
A filter on one logger would miss records of its children; a factory sees them all.
"""

from __future__ import annotations

import logging
import re

from animenb.store.tokens_base import TOKEN_PREFIX

REDACTED = "<redacted>"
_SECRET_PATTERNS = (
    re.compile(r"(?i)((?:^|[?&;\s])[a-z_]*token=)[^&\s\"'#]+"),  # ?token=..., &cancel_token=...
    # Authorization: Bearer ...; a placeholder such as `Bearer <token>` in a message is not a secret.
    re.compile(r"(?i)(bearer\s+)(?!<[a-z_-]+>)[^\s\"'`,;]+"),
    re.compile(rf"(){re.escape(TOKEN_PREFIX)}[A-Za-z0-9_\-]+"),  # a bare animenb token anywhere
)
_installed = False


def redact(text: str) -> str:
    """`text` with every token-shaped secret replaced by `<redacted>`."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def install_log_redaction() -> None:
    """Redact secrets in every log record made from now on in this process (idempotent)."""
    global _installed
    if _installed:
        return
    make_record = logging.getLogRecordFactory()

    def redacting_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as usual
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    logging.setLogRecordFactory(redacting_record)
    _installed = True
