"""The native thread pool: every task of every parallel region runs exactly
once, with workers spinning, asleep, or woken late, on any thread count."""

import threading

import pytest

from llmrt import _core


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_every_task_runs_once(threads):
    assert _core.testing.thread_pool_check(threads, 20000, max_tasks=40) == 0


@pytest.mark.parametrize("threads", [2, 4])
def test_regions_after_the_workers_fell_asleep(threads):
    # a pause every few regions lets the workers go to sleep; the next region
    # must wake them (or run without them) and still run every task once
    assert _core.testing.thread_pool_check(threads, 300, max_tasks=17, pause_every=3) == 0


def test_pools_on_a_busy_machine():
    # more pool threads than cores, several pools at once: workers are often
    # descheduled mid-region, the case the region hand-out must survive
    errors = []

    def one():
        errors.append(_core.testing.thread_pool_check(4, 3000, max_tasks=33))

    ts = [threading.Thread(target=one) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == [0, 0, 0]
