"""A streaming LLM benchmark client written the way common benchmark
scripts are (asyncio + aiohttp, one task per request, json.loads per SSE
line, time.perf_counter timestamps, asyncio.sleep between Poisson
arrivals): the baseline gapscope-loadgen's benchmark compares against.

usage: aiohttp_client.py URL closed CONCURRENCY SECONDS MAX_TOKENS
       aiohttp_client.py URL open RATE SECONDS MAX_TOKENS

Prints one JSON line: completed requests, chunks, seconds, and for open
loops the send lags (s) behind the precomputed schedule.
"""

import asyncio
import json
import random
import sys
import time

import aiohttp


async def one(session, url, max_tokens, stats):
    body = {"model": "m", "prompt": "hello " * 16, "max_tokens": max_tokens, "stream": True}
    chunks = 0
    async with session.post(url, json=body) as resp:
        async for line in resp.content:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if event["choices"] and event["choices"][0].get("text"):
                chunks += 1
                stats["last_token"] = time.perf_counter()
    stats["completed"] += 1
    stats["chunks"] += chunks


async def closed(url, concurrency, seconds, max_tokens):
    stats = {"completed": 0, "chunks": 0}
    deadline = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker():
            while time.perf_counter() < deadline:
                await one(session, url, max_tokens, stats)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        stats["seconds"] = time.perf_counter() - start
    return stats


async def open_loop(url, rate, seconds, max_tokens):
    stats = {"completed": 0, "chunks": 0}
    rng = random.Random(1)
    schedule, t = [], rng.expovariate(rate)
    while t < seconds:
        schedule.append(t)
        t += rng.expovariate(rate)
    lags, tasks = [], []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        start = time.perf_counter()
        for due in schedule:
            delay = start + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(time.perf_counter() - start - due)
            tasks.append(asyncio.create_task(one(session, url, max_tokens, stats)))
        await asyncio.gather(*tasks, return_exceptions=True)
        stats["seconds"] = time.perf_counter() - start
    stats["sent"] = len(schedule)
    stats["window"] = seconds
    stats["lags"] = lags
    return stats


def main():
    url, mode, x, seconds, max_tokens = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    if mode == "closed":
        stats = asyncio.run(closed(url, int(x), seconds, max_tokens))
    else:
        stats = asyncio.run(open_loop(url, x, seconds, max_tokens))
    stats.pop("last_token", None)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
