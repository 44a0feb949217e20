"""Live migration, wire-compatible with ``xl migrate`` / ``xl migrate-receive``.

Sender::

    from xensr.migrate import CommandTransport, migrate_domain
    with CommandTransport.ssh("host2", program="xensr") as t:
        result = migrate_domain(host, domid, t)     # policy=DowntimePolicy(...) too

Receiver (what ``xensr migrate-receive`` runs, on stdin/stdout)::

    receive_domain(host, send_fd=1, recv_fd=0)
    receive_to_file("guest.save", send_fd=1, recv_fd=0)

``host`` is a :class:`xensr.toolstack.Toolstack` (a
:class:`xensr.testing.SimulatedHost`, or ``xensr.realhost.XenHost``).
"""

from .engine import Exchange
from .receiver import (MigrationReceiver, ReceiveOptions, ReceiveResult, aio_receive_domain,
                       receive_domain, receive_to_file)
from .sender import (MigrateOptions, MigrationResult, MigrationSender, Round,
                     aio_migrate_domain, config_object, migrate_domain)
from .transport import CommandTransport, TransportError
from .wire import (BANNER, GO, READY, REPORT, HandshakeUndefined, MigrationError, PeerClosed,
                   TargetFailed, UnexpectedMessage)

__all__ = [
    "Exchange", "MigrationReceiver", "ReceiveOptions", "MigrateOptions", "ReceiveResult", "receive_domain", "aio_receive_domain",
    "receive_to_file",
    "MigrationResult", "MigrationSender", "Round", "aio_migrate_domain", "config_object",
    "migrate_domain", "CommandTransport", "TransportError", "BANNER", "GO", "READY",
    "REPORT", "HandshakeUndefined", "MigrationError", "PeerClosed", "TargetFailed",
    "UnexpectedMessage",
]
