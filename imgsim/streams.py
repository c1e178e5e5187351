"""Reading a client stream with an idle limit, so a stream that never ends cannot hold a worker forever."""

import queue
import threading
from typing import Iterator

_END = object()


class StreamIdle(Exception):
    """The client sent nothing for longer than the idle limit."""


def with_idle_limit(requests: Iterator, idle_s: float) -> Iterator:
    """Yields the client's messages; raises StreamIdle when none arrives for `idle_s` seconds.

    A helper thread reads ahead by at most two messages, so gRPC's flow control still slows a fast client.
    """
    inbox: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()  # set when the reader is done, so the helper does not wait to hand over more

    def pump() -> None:
        try:
            for message in requests:
                while not stop.is_set():
                    try:
                        inbox.put(message, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            inbox.put(_END)
        except Exception as err:  # the call ended under us (cancelled, deadline): hand it to the reader
            inbox.put(err)

    threading.Thread(target=pump, daemon=True, name="stream-reader").start()
    try:
        while True:
            try:
                item = inbox.get(timeout=idle_s)
            except queue.Empty:
                raise StreamIdle(f"the stream sent nothing for {idle_s:g} s and was closed; "
                                 "send the next message sooner or close the stream") from None
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
