"""Spins in a generator driven by a coroutine run by asyncio: frames a generator or coroutine owns
(FRAME_OWNED_BY_GENERATOR from 3.11) in the middle of a thread's chain. Prints "{}" when it is there."""

import asyncio


def numbers():
    yield 1
    print("{}", flush=True)
    while True: pass  # noqa: E701  (one line: the same line wherever it is caught)


async def consume():
    await asyncio.sleep(0)
    for _ in numbers():
        pass


def main():
    if hasattr(asyncio, "run"):
        asyncio.run(consume())
    else:  # 3.6
        asyncio.get_event_loop().run_until_complete(consume())


main()
