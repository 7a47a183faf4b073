"""A TCP proxy on loopback that cuts a download mid-way: a real network failure for the fault tests.

``CutProxy(target_port)`` forwards ``127.0.0.1:proxy.port`` to the target. ``cut_after(n, for_s)``:
once ``n`` bytes went back to the clients, every connection is dropped and new ones are refused
for ``for_s`` seconds (``restore()`` ends the outage early); ``outages`` counts the cuts.
"""

from __future__ import annotations

import socket
import threading


class CutProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = 0  # bytes sent back to clients
        self.outages = 0
        self._trigger: tuple[int, float] | None = None
        self._up = threading.Event()
        self._up.set()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, nbytes: int, for_s: float) -> None:
        with self._lock:
            self._trigger = (self.received + nbytes, for_s)

    def restore(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._up.set()

    def _outage(self, for_s: float) -> None:
        self._up.clear()
        self.outages += 1
        with self._lock:
            conns, self._conns = set(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._timer = threading.Timer(for_s, self._up.set)
        self._timer.daemon = True
        self._timer.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if downstream:
                    with self._lock:
                        self.received += len(data)
                        fire = self._trigger if self._trigger and self.received >= self._trigger[0] else None
                        if fire:
                            self._trigger = None
                    if fire:
                        self._outage(fire[1])
                        return
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self.restore()
        self.listener.close()
