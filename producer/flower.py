"""The Celery app Flower runs with: `celery -A svdq.producer.flower flower ...`.

Flower must share svdq's broker transport options. svdq sets kombu's `sep` to ':' (so the
priority sub-queues are named `svdq.tiny:1` …), and kombu uses the same separator for its
exchange binding table: a Flower started with a bare `--broker` URL writes bindings with
kombu's default separator, and every worker's reply to Flower's inspect commands then fails
with "not enough values to unpack" — Flower shows no workers. No torch is imported here.
"""

from __future__ import annotations

from svdq.shared.celery_app import make_celery
from svdq.shared.settings import Settings

app = make_celery(Settings.from_env())
