#!/usr/bin/python3
"""chunk_sink.py — a next hop for bench/relay.py --chunk-sink: takes every message and
forgets it, like Postfix's smtp-sink -c, but can offer CHUNKING (Postfix 3.7's smtp-sink
has no BDAT). It prints "mesg=N" after each message, as smtp-sink -c does, so relay.py
counts the same way.

Replies to pipelined commands are sent together once the input read so far is used up
(as Postfix's smtpd does), so the client sees one reply packet per group.

Usage: chunk_sink.py HOST:PORT on|off  (on: EHLO offers CHUNKING). Loopback only; no
state kept; never stops by itself (relay.py kills it by its process group).
"""
import asyncio
import sys


class Sink(asyncio.Protocol):
    count = 0

    def __init__(self, chunking):
        self.chunking = chunking
        self.buf = bytearray()
        self.need = 0       # BDAT bytes still to skip
        self.last = False   # the chunk being skipped is the LAST one
        self.in_data = False

    def connection_made(self, tr):
        self.tr = tr
        tr.write(b"220 chunk-sink ESMTP\r\n")

    def _done(self, out):
        Sink.count += 1
        out.append(b"250 2.0.0 Ok: queued\r\n")
        sys.stdout.write(f"mesg={Sink.count}\n")
        sys.stdout.flush()

    def data_received(self, data):
        self.buf += data
        out = []
        while True:
            if self.need:
                n = min(self.need, len(self.buf))
                del self.buf[:n]
                self.need -= n
                if self.need:
                    break
                if self.last:
                    self._done(out)
                else:
                    out.append(b"250 2.0.0 chunk ok\r\n")
                continue
            i = self.buf.find(b"\n")
            if i < 0:
                break
            line = bytes(self.buf[:i + 1])
            del self.buf[:i + 1]
            if self.in_data:
                if line == b".\r\n":
                    self.in_data = False
                    self._done(out)
                continue
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                caps = b"250-chunk-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                if self.chunking:
                    caps += b"250-CHUNKING\r\n"
                out.append(caps + b"250 ENHANCEDSTATUSCODES\r\n")
            elif verb == b"DATA":
                self.in_data = True
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"BDAT":
                parts = line.split()
                self.need = int(parts[1])
                self.last = len(parts) > 2 and parts[2].upper() == b"LAST"
                if self.need == 0:
                    if self.last:
                        self._done(out)
                    else:
                        out.append(b"250 2.0.0 chunk ok\r\n")
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                self.tr.write(b"".join(out))
                self.tr.close()
                return
            else:
                out.append(b"250 2.0.0 Ok\r\n")
        if out:
            self.tr.write(b"".join(out))


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    chunking = sys.argv[2] == "on"
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Sink(chunking), host, int(port), backlog=4096)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
