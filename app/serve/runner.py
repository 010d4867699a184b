"""One model, many clients: requests queue for a single worker thread that drives the backend.

A request becomes a `Job`. The worker takes jobs in arrival order and runs
`backend.stream(...)` for each, in its own thread (backends block), handing the events
to the job's asyncio queue on the server's event loop. Setting `job.cancel` (the client
went away, or the server is stopping) stops the generation between tokens; a job
cancelled while still queued is never started. Stop sequences are cut here, so the
generation stops as soon as one appears.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import replace

from app.backends.base import Backend, ChatMessage, one_line
from vocab.events import AnswerDelta, Done, Event, Failed, ThinkingDelta, Usage
from app.config import Sampling
from app.serve.stops import StopCutter


class Job:
    """One chat completion: what to generate, its cancel switch, and the events it produced."""

    def __init__(self, messages: list[ChatMessage], sampling: Sampling, stop: tuple[str, ...],
                 loop: asyncio.AbstractEventLoop, grammar: str | None = None, output: dict | None = None):
        self.messages, self.sampling, self.stop, self.grammar = messages, sampling, stop, grammar
        self.output = output
        self.cancel = threading.Event()
        self._loop = loop
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    def put(self, event: Event) -> None:
        """From the worker thread: hand an event to the request's coroutine."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    async def next(self) -> Event:
        return await self._events.get()


class Runner:
    """The one backend, and the worker thread that serves the queued jobs one at a time."""

    def __init__(self, backend: Backend, log: Callable[[str], None] | None = None):
        self.backend = backend
        self.log = log or _stderr
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._live: set[Job] = set()  # queued or running
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="duet-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, messages: list[ChatMessage], sampling: Sampling, stop: tuple[str, ...] = (),
               grammar: str | None = None, output: dict | None = None) -> Job:
        """Queue a completion; ``grammar`` (GBNF) holds the reply to it (a llama.cpp backend);
        ``output``, request fields that do, the server an openai backend proxies is sent."""
        job = Job(messages, sampling, stop, asyncio.get_running_loop(), grammar, output)
        with self._lock:
            if self._closed:
                job.put(Failed("the server is shutting down"))
                return job
            self._live.add(job)
        self._jobs.put(job)
        return job

    def cancel_all(self) -> None:
        """Stop the running generation and drop the queued ones (server shutdown)."""
        with self._lock:
            self._closed = True
            for job in self._live:
                job.cancel.set()

    def close(self, timeout: float = 30.0) -> None:
        """Cancel everything, wait for the worker, release the model."""
        self.cancel_all()
        self._jobs.put(None)
        self._thread.join(timeout)
        self.backend.close()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if job.cancel.is_set():  # the client left while it waited
                    job.put(Done("cancelled"))
                    self.log("a request was cancelled before its turn: not started")
                else:
                    self._run(job)
            finally:
                with self._lock:
                    self._live.discard(job)

    def _run(self, job: Job) -> None:
        cutter = StopCutter(job.stop)
        ended = False
        produced = None
        stream = self.backend.stream(job.messages, job.sampling, cancel=job.cancel, grammar=job.grammar,
                                     output=job.output or None)
        try:
            for event in stream:
                if isinstance(event, AnswerDelta):
                    text = cutter.feed(event.text)
                    if text:
                        job.put(AnswerDelta(text))
                    if cutter.hit:
                        job.cancel.set()  # a stop sequence: no need for more tokens
                elif isinstance(event, ThinkingDelta):
                    if not cutter.hit:
                        job.put(event)
                elif isinstance(event, Done):
                    if event.finish_reason == "cancelled" and not cutter.hit:
                        self.log(f"a request was cancelled: its generation stopped after {produced or 0} tokens")
                    rest = cutter.flush()
                    if rest:
                        job.put(AnswerDelta(rest))
                    job.put(replace(event, finish_reason="stop") if cutter.hit else event)
                    ended = True
                    return
                elif isinstance(event, (Usage, Failed)):
                    produced = event.completion_tokens if isinstance(event, Usage) else produced
                    job.put(event)
                    if isinstance(event, Failed):
                        ended = True
                        return
        except Exception as exc:  # a backend bug must not take the worker down
            job.put(Failed(f"the model stopped mid-answer ({type(exc).__name__}: {one_line(str(exc), 200)})"))
            ended = True
        finally:
            stream.close()  # frees the model even if the backend had more to say
            if not ended:
                job.put(Failed("the backend ended without finishing the answer"))


def _stderr(line: str) -> None:
    print(f"duet serve: {line}", file=sys.stderr, flush=True)
