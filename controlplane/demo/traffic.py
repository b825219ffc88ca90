"""The demo's application: requests through ``client.complete()`` at a steady rate, and users
who rate some answers (thumbs up is likelier for a fast answer than for a slow one or an
error). Answers are streamed (the time to first token is measured)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

SYSTEM_PROMPT = "You are Acme's support assistant. Answer briefly and politely."
QUESTIONS = [
    "How do I reset my password?",
    "My order {n} has not arrived yet. Where is it?",
    "Can I change the delivery address of order {n}?",
    "What is your refund policy for opened items?",
    "The app crashes when I open the settings page.",
    "How do I cancel my subscription?",
    "I was charged twice for order {n}.",
    "Do you ship to Canada?",
    "Please update my email to jane.doe@example.com.",  # masked in stored shadow pairs
    "How long does the warranty last on the X200 blender?",
    "Can I pay with a gift card and a credit card together?",
    "The discount code SPRING10 does not work.",
]


class Traffic:
    """``rate`` requests a second to ``plan`` through ``client.complete()``, each on a pool
    thread (a call blocks for the model's latency), and users' thumbs."""

    def __init__(self, client: Any, plan: str, rate: float, stop: threading.Event) -> None:
        self.client = client
        self.plan = plan
        self.rate = rate
        self.stop = stop
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.in_flight = 0
        self.workers = 64

    def run(self) -> None:
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="app")
        rng = random.Random(7)
        period = 1.0 / self.rate
        # One request first, alone: the first call builds the arm's adapter (importing the
        # vendor SDK takes seconds on a busy machine) while every other thread would wait.
        with self.lock:
            self.in_flight += 1
        self.one(rng.randrange(5000), rng.choice(QUESTIONS), rng.random())
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                with self.lock:
                    saturated = self.in_flight >= self.workers
                    if not saturated:
                        self.in_flight += 1
                if saturated:
                    self.count("skipped")  # the app is out of threads: shed, do not queue
                else:
                    pool.submit(self.one, rng.randrange(5000), rng.choice(QUESTIONS), rng.random())
                next_at += period
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def count(self, *keys: str) -> None:
        with self.lock:
            self.counts.update(keys)

    def one(self, user: int, question: str, draw: float) -> None:
        try:
            messages = [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": question.format(n=40_000 + user)},
            ]
            done = self.client.complete(
                self.plan, f"user-{user}", messages=messages, params={"max_tokens": 300},
                stream=True, timeout=10.0,
            )  # fmt: skip
            latency = sum(r.latency_ms for r in done.results)
            keys = [f"routed:{done.decision.arm}"]
            if done.fell_back:
                keys.append("fell_back")
            if done.error:
                keys.append("error")
            if done.decision.shadow:
                keys.append("shadowed")
            self.count(*keys)
            with self.lock:
                self.latencies.append(latency)
            self.served(done, messages[-1]["content"])
            # One user in five rates the answer; fast answers please more than slow ones.
            if draw < 0.2:
                liked = 0.1 if done.error else (0.85 if latency < 1500 else 0.5)
                self.client.feedback(done.decision_id, 1 if random.random() < liked else -1)
        finally:
            with self.lock:
                self.in_flight -= 1

    def served(self, done: Any, question: str) -> None:
        """What the application does with an answer besides showing it (a story's own
        application reports its metrics here)."""

    def take(self) -> tuple[Counter[str], list[float]]:
        with self.lock:
            counts, latencies = self.counts, self.latencies
            self.counts, self.latencies = Counter(), []
        return counts, latencies

    def summary(self, seconds: float) -> str:
        """What the application did since the last summary (``seconds`` ago), and forget it."""
        counts, latencies = self.take()
        return self.describe(counts, latencies, seconds)

    def describe(self, counts: Counter[str], latencies: list[float], seconds: float) -> str:
        return (
            f"app: {sum(v for k, v in counts.items() if k.startswith('routed:'))} requests "
            f"in {seconds:g} s: {counts['routed:control']} routed to control, "
            f"{counts['routed:candidate']} to the candidate ({counts['fell_back']} fell "
            f"back to control), {counts['shadowed']} shadowed, {counts['error']} failed; "
            f"p50 {_pct(latencies, 0.5):.0f} ms, p95 {_pct(latencies, 0.95):.0f} ms"
            + (f"; {counts['skipped']} shed" if counts["skipped"] else "")
        )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0
