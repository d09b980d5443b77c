"""Certificate expiry as metrics: what an operator alerts on before a certificate lapses.

``CertMetrics(rows)`` is a prometheus_client custom collector over ``get_certs``-shaped rows
(one per served certificate: ``sans``, ``source``, ``not_after``, ACME's ``next_renewal``),
read at each scrape, so a renewal shows without a reload. ACME's self-signed stand-in, served
until the certificate is issued, has the source ``fallback``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Iterator

from prometheus_client.core import GaugeMetricFamily

__all__ = ["CertMetrics", "cert_families"]


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def cert_families(rows: list[dict]) -> Iterator[Any]:
    """``vane_cert_not_after_timestamp_seconds`` and, for ACME certificates,
    ``vane_cert_next_renewal_timestamp_seconds``, labelled by the names and the source."""
    not_after = GaugeMetricFamily("vane_cert_not_after_timestamp_seconds",
                                  "When the served certificate expires (unix time).", labels=["names", "source"])
    renewal = GaugeMetricFamily("vane_cert_next_renewal_timestamp_seconds",
                                "When vaned next tries to renew the ACME certificate (unix time).",
                                labels=["names", "source"])
    seen: set[tuple[str, str]] = set()
    for row in rows:
        source = "fallback" if row.get("fallback") else str(row.get("source") or "file")
        labels = (",".join(row.get("sans") or []), source)
        if labels in seen:          # one certificate served on several listeners
            continue
        seen.add(labels)
        expires = _timestamp(row.get("not_after"))
        if expires is not None:
            not_after.add_metric(list(labels), expires)
        renews = _timestamp(row.get("next_renewal"))
        if renews is not None:
            renewal.add_metric(list(labels), renews)
    yield not_after
    yield renewal


class CertMetrics:
    """The certificate families of ``rows()`` at scrape time."""

    def __init__(self, rows: Callable[[], list[dict]]) -> None:
        self.rows = rows

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        yield from cert_families(self.rows())
