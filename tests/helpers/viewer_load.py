"""Concurrent sessions against a live `neuroscope view` server, over Streamlit's own websocket
protocol (what a browser tab sends): each session asks for one page after another by query
string and waits for the script to finish. Counts errors (exceptions, error messages, failed
runs, dropped connections) and times each page from request to `script_finished`."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

import websockets
from streamlit.proto.Alert_pb2 import Alert
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg


@dataclass
class LoadResult:
    sessions: int
    pages: int = 0
    times_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        t = sorted(self.times_ms)
        p95 = t[min(len(t) - 1, int(round(0.95 * (len(t) - 1))))] if t else None
        return {"sessions": self.sessions, "pages": self.pages, "errors": len(self.errors),
                "median_ms": round(statistics.median(t), 1) if t else None, "p95_ms": round(p95, 1) if t else None,
                "max_ms": round(t[-1], 1) if t else None, "first_errors": self.errors[:5]}


async def _page(ws, query: str, timeout_s: float) -> tuple[float, list[str]]:
    msg = BackMsg()
    msg.rerun_script.query_string = query
    started = time.perf_counter()
    await ws.send(msg.SerializeToString())
    problems = []
    while True:
        fwd = ForwardMsg()
        fwd.ParseFromString(await asyncio.wait_for(ws.recv(), timeout_s))
        kind = fwd.WhichOneof("type")
        if kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
            el = fwd.delta.new_element
            if el.WhichOneof("type") == "exception":
                problems.append(f"{query}: exception {el.exception.type}: {el.exception.message[:200]}")
            elif el.WhichOneof("type") == "alert" and el.alert.format == Alert.Format.ERROR:
                problems.append(f"{query}: error message: {el.alert.body[:200]}")
        elif kind == "script_finished":
            if fwd.script_finished != ForwardMsg.ScriptFinishedStatus.FINISHED_SUCCESSFULLY:
                problems.append(f"{query}: script ended with status {fwd.script_finished}")
            return (time.perf_counter() - started) * 1000, problems


async def _session(url: str, queries: list[str], result: LoadResult, timeout_s: float) -> None:
    try:
        async with websockets.connect(url, subprotocols=["streamlit"], max_size=None, open_timeout=timeout_s) as ws:
            for query in queries:
                ms, problems = await _page(ws, query, timeout_s)
                result.times_ms.append(ms)
                result.pages += 1
                result.errors += problems
    except Exception as e:  # a dropped connection or a timeout is an error of the run
        result.errors.append(f"session failed: {type(e).__name__}: {e}")


def run_load(port: int, walks: list[list[str]], timeout_s: float = 60, total_s: float = 300) -> LoadResult:
    """One session per walk, all at once; each walk is a list of query strings (no '?')."""
    url = f"ws://127.0.0.1:{port}/_stcore/stream"
    result = LoadResult(sessions=len(walks))

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(_session(url, w, result, timeout_s) for w in walks)), total_s)

    asyncio.run(main())
    return result
