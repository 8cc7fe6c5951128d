"""Signed webhooks (Standard Webhooks) for call events, from a transactional outbox in PostgreSQL.

    endpoints.py  receivers from [webhooks]: URL, secrets, event filter (checked)
    events.py     event payloads built from what is stored; message ids
    outbox.py     the webhook_outbox table: queued inside the RecordWriter's transaction,
                  claimed, marked, counted, dead letters listed and resent
    signing.py    webhook-id / webhook-timestamp / webhook-signature headers
    delivery.py   the worker: at-least-once posting, backoff with jitter, dead letters
    api.py        GET /api/webhooks/dead, POST /api/webhooks/{id}/resend

Any process that writes records queues events when receivers are configured; any
process that runs a Runtime (``serve``, also ``transcribe`` and ``replay`` while
they run) delivers them.
"""

from __future__ import annotations

from .endpoints import EVENT_TYPES, Endpoint, configured_endpoints, new_secret
from .outbox import Outbox


def outbox_for(settings) -> Outbox | None:
    """The RecordWriter's outbox hook, or None when no receiver is configured."""
    endpoints = configured_endpoints(settings.webhooks)
    return Outbox(endpoints) if endpoints else None


async def start_delivery(settings, database_url: str, box: Outbox | None):
    """The delivery worker for ``box`` (woken on every commit that queued events), or None."""
    if box is None:
        return None
    from .delivery import DeliveryWorker

    worker = DeliveryWorker(settings.webhooks, database_url, box.endpoints)
    box.on_commit(worker.wake)
    return await worker.start()


__all__ = ["EVENT_TYPES", "Endpoint", "Outbox", "configured_endpoints", "new_secret", "outbox_for", "start_delivery"]
