"""The ingress's own alert cards, rendered within a time budget.

When the emergency generator is saturated, every alert lands here at once; rendering each card
(~0.3 s of CPU) in turn would push the last ones past their deadline. So cards render on a small
pool of threads, each with the time left before `deadline - serve.alert_margin_s`; a card that
cannot make it is answered with its type's default card, rendered when the ingress started. A card
whose turn in the queue would come too late (cards waiting x running mean render time) is not
queued at all: its default card answers at once, which keeps the queue short in a storm.
Identical alerts (the same type, language, text and region) are rendered once and kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from aiprod.config import Config
from aiprod.emergency.render import AlertRequest
from aiprod.serving.generation import AlertResult, render_template

log = logging.getLogger(__name__)
SMOOTHING = 0.3  # weight of the newest render time in the running mean


class FallbackRenderer:
    def __init__(self, cfg: Config, types: list[str]):
        self.cfg = cfg
        self._pool = ThreadPoolExecutor(cfg.serve.alert_render_threads, thread_name_prefix="alert-card")
        self._cache: OrderedDict[AlertRequest, AlertResult] = OrderedDict()
        self.defaults = {name: render_template(AlertRequest(name), cfg, "") for name in types}
        self.render_s = max(card.generation_s for card in self.defaults.values())  # running mean, from start-up
        self.queued = 0  # cards submitted and neither finished nor cancelled
        self._lock = threading.Lock()
        self.over_budget = 0

    def _remember(self, request: AlertRequest, result: AlertResult) -> None:
        size = self.cfg.serve.alert_cache_size
        if size <= 0:
            return
        self._cache[request] = result
        self._cache.move_to_end(request)
        while len(self._cache) > size:
            self._cache.popitem(last=False)

    def default(self, request: AlertRequest, reason: str, started: float) -> AlertResult:
        """The type's default card (rendered at start-up), answered at once."""
        card = self.defaults[request.emergency_type]
        return dataclasses.replace(card, reason=reason, generation_s=time.time() - started)

    async def render(self, request: AlertRequest, reason: str, render_by: float) -> AlertResult:
        """The card for `request`, or its type's default card when it cannot be ready by `render_by`
        (time.time()) or fails; `reason` says why no model answered."""
        started = time.time()
        cached = self._cache.get(request)
        if cached is not None:
            self._cache.move_to_end(request)
            return dataclasses.replace(cached, reason=reason, generation_s=time.time() - started)
        budget = render_by - started
        expected = (self.queued // self.cfg.serve.alert_render_threads + 1) * self.render_s
        if expected > budget:
            self.over_budget += 1
            return self.default(request, f"{reason}; this card would take about {expected:.1f}s to render, "
                                         f"{max(budget, 0):.1f}s left: the type's default card", started)
        with self._lock:
            self.queued += 1
        future = self._pool.submit(self._timed, request, reason)
        future.add_done_callback(self._finished)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), budget)
        except TimeoutError:
            future.cancel()  # still queued: never rendered; running: its thread finishes it, unused
            self.over_budget += 1
            return self.default(request, f"{reason}; card not rendered within {budget:.1f}s: the type's default "
                                          f"card", started)
        except Exception as exc:  # noqa: BLE001 - an alert is never answered with an error
            log.warning("alert card failed: %s: %s", type(exc).__name__, exc)
            return self.default(request, f"{reason}; custom card failed ({type(exc).__name__}), English defaults "
                                          f"used", started)
        self._remember(request, result)
        return result

    def _timed(self, request: AlertRequest, reason: str) -> AlertResult:
        start = time.perf_counter()
        try:
            return render_template(request, self.cfg, reason)
        finally:
            self.render_s = (1 - SMOOTHING) * self.render_s + SMOOTHING * (time.perf_counter() - start)

    def _finished(self, _future) -> None:
        with self._lock:
            self.queued -= 1
