"""The dashboard: pages served by ``tuneloop serve`` over the public HTTP API (see ``routes``)."""

from tuneloop.ui.routes import mount_dashboard

__all__ = ["mount_dashboard"]
