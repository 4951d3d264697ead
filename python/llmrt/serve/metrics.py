"""Prometheus metrics of a server: request and token counters, latency
histograms, and the engine's state read at each scrape (queue, running
requests, KV blocks, prefix-cache hit rate, images encoded; an encoder model,
which has no engine, only the counters)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from ..encoder import EncoderModel
    from ..model import Model


class Metrics:
    def __init__(self, model: "Model | EncoderModel"):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llmrt_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("llmrt_prompt_tokens", "Prompt tokens processed",
                                     registry=r)
        self.generation_tokens = Counter("llmrt_generation_tokens", "Tokens generated",
                                         registry=r)
        self.ttft = Histogram("llmrt_time_to_first_token_seconds",
                              "Time from a request's arrival to its first token",
                              buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
                              registry=r)
        self.tpot = Histogram("llmrt_time_per_output_token_seconds",
                              "Time per generated token after the first",
                              buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1),
                              registry=r)
        if getattr(model, "scheduler", None) is not None:  # an encoder model has no engine
            r.register(_EngineCollector(cast("Model", model)))

    def finished(self, results: list) -> None:
        """A generation request's results (one per choice)."""
        for res in results:
            self.generation_tokens.inc(len(res.token_ids))
            t = res.timings
            if "time_to_first_token_ms" in t:
                self.ttft.observe(t["time_to_first_token_ms"] / 1e3)
            n = len(res.token_ids)
            if n > 1 and "decode_ms" in t:
                self.tpot.observe(t["decode_ms"] / 1e3 / (n - 1))


class _EngineCollector:
    def __init__(self, model: "Model"):
        self.model = model

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        sched = self.model.scheduler
        st = self.model.cache_stats()
        yield GaugeMetricFamily("llmrt_queue_depth", "Requests waiting to start",
                                value=len(sched.waiting))
        yield GaugeMetricFamily("llmrt_running_requests", "Sequences running in the batch",
                                value=sum(t.width for t in list(sched.active)))
        yield GaugeMetricFamily("llmrt_kv_blocks_used", "KV-cache blocks held by sequences",
                                value=st["blocks_in_use"])
        yield GaugeMetricFamily("llmrt_kv_blocks_total", "KV-cache blocks in the pool",
                                value=st["blocks_total"])
        looked = st["hits"] + st["misses"]
        yield GaugeMetricFamily("llmrt_prefix_cache_hit_rate",
                                "Full prompt blocks found in the prefix cache / looked up",
                                value=st["hits"] / looked if looked else 0.0)
        if self.model.vision is not None:  # the rest of the requests' images came from its cache
            yield CounterMetricFamily("llmrt_images_encoded",
                                      "Images run through the vision encoder",
                                      value=self.model.vision.images_encoded)
