"""The audit trail: an append-only, hash-chained, signed and durable log of records.

Layout of a log directory:

    LOG_ID              the log's identity, bound into its first chain hash
    LOCK                held by the one writer (flock)
    00000001.log        a segment: header, then framed records (see segment.py)
    00000001.idx        its index by subject, model and data class (when sealed)
    00000001.ckpt       its signed checkpoint (when sealed)
    00000002.log.torn-N bytes a crash left after the last intact record, moved aside

See docs/audit.md for the whole design.
"""

from .checkpoint import Checkpoint, Signer, load_public_key
from .segment import AuditFormatError
from .verify import Problem, VerifyReport, verify_log
from .writer import AuditLog, AuditLogClosedError

__all__ = [
    "AuditFormatError",
    "AuditLog",
    "AuditLogClosedError",
    "Checkpoint",
    "Problem",
    "Signer",
    "VerifyReport",
    "load_public_key",
    "verify_log",
]
