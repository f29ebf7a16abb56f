"""The Host-header allow-list: a page on another site that rebinds its DNS name to 127.0.0.1
still sends its own name, and gets 400 here."""

from __future__ import annotations

from artlens.serve.guard import error_body, send_json


def _split_host(value: str) -> tuple[str, int | None]:
    """`name[:port]` (`[v6]:port` for IPv6) -> (lowercased name, port or None)."""
    value = value.strip().lower().rstrip(".")
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name += "]"
    else:
        name, _, rest = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    port = rest.lstrip(":")
    return name.rstrip("."), (int(port) if port.isdigit() else None)


class HostAllowList:
    """400 (JSON error) for a request whose Host header is not allowed: a page on another site that
    rebinds its DNS name to 127.0.0.1 sends its own name. The name decides; ports are compared
    only where both the entry and the header have one."""

    def __init__(self, app, allowed_hosts: list[str]):
        self.app = app
        self.allowed = [_split_host(h) for h in allowed_hosts]

    def _ok(self, host: str) -> bool:
        name, port = _split_host(host)
        return bool(name) and any(name == n and (None in (p, port) or p == port) for n, p in self.allowed)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not self._ok(host):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send_json(send, 400, error_body("invalid_host", f"Host {host!r} is not allowed by this server"))
                return
        await self.app(scope, receive, send)
