"""Reading a client stream with an idle limit, so a stream that never sends cannot hold anything forever."""

import asyncio
from typing import AsyncIterator


class StreamIdle(Exception):
    """The client sent nothing for longer than the idle limit."""


async def idle_limited(requests: AsyncIterator, idle_s: float) -> AsyncIterator:
    """Yields the client's messages; raises StreamIdle when none arrives for `idle_s` seconds."""
    iterator = requests.__aiter__()
    while True:
        try:
            message = await asyncio.wait_for(iterator.__anext__(), idle_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise StreamIdle(f"the stream sent nothing for {idle_s:g} s and was closed; send the next message "
                             "sooner or close the stream") from None
        yield message
