"""Prometheus metrics (prometheus-client), one registry per app so tests and several apps in
one process never collide. Labels carry routes and statuses only, never content or ids."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    active_streams: Gauge
    pending_replies: Gauge
    streams: Counter
    stream_events: Counter
    stream_tokens: Counter
    chunks_written: Counter
    storage_failures: Counter
    rebuild_seconds: Histogram
    resumes: Counter
    background_replies: Counter
    cancels: Counter

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "edge_requests", "HTTP requests", ["route", "method", "status"], registry=registry
            ),
            active_streams=Gauge("edge_active_streams", "Streams in flight", registry=registry),
            pending_replies=Gauge(
                "edge_pending_replies",
                "Replies whose stream ended or is in flight and whose storing is not done",
                registry=registry,
            ),
            streams=Counter("edge_streams", "Streams relayed", ["outcome"], registry=registry),
            stream_events=Counter(
                "edge_stream_events", "SSE events sent to clients", registry=registry
            ),
            stream_tokens=Counter(
                "edge_stream_tokens", "Content deltas received from upstream", registry=registry
            ),
            chunks_written=Counter(
                "edge_chunks_written", "Chunk files written by the edge", registry=registry
            ),
            storage_failures=Counter(
                "edge_storage_failures", "Storage operations that failed", registry=registry
            ),
            rebuild_seconds=Histogram(
                "edge_rebuild_seconds",
                "Time to rebuild a page of conversation messages",
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
                registry=registry,
            ),
            resumes=Counter(
                "edge_resumes",
                "Resumed streams, by where the rest came from: live (this instance produces the "
                "reply), store (another instance does), ended (the reply had ended)",
                ["source"],
                registry=registry,
            ),
            background_replies=Counter(
                "edge_background_replies",
                "Replies that went on after their client disconnected, by how they ended",
                ["outcome"],
                registry=registry,
            ),
            cancels=Counter(
                "edge_cancels",
                "Replies stopped on request: local (this instance produced it) or remote "
                "(passed on to the instance that does)",
                ["scope"],
                registry=registry,
            ),
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
