#!/usr/bin/env python3
"""A CRM's consumer of a partner's event feed, in Python with grpcio.

Follows WatchEvents from the event after the last one it processed, which it keeps in a cursor
file: after an outage of the daemon, of the network or of itself, it starts again from there, and
misses nothing. An event is written out, then the cursor moved past it (so after a crash the last
event may come once more: a CRM tells a repeat by its event_id). A cursor older than the daemon
keeps events for is refused (FAILED_PRECONDITION / CURSOR_EXPIRED, naming the oldest sequence
kept): then what happened meanwhile is read from the ledger itself.
"""

import argparse
import json
import os
import pathlib

import till  # noqa: F401  (compiles proto/ into ./_gen and makes it importable)
import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from coalition.v1 import partner_pb2 as pb  # noqa: E402
from coalition.v1 import partner_pb2_grpc  # noqa: E402


def read_cursor(path: pathlib.Path) -> int:
    """The last sequence processed (0: none yet)."""
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0


def write_cursor(path: pathlib.Path, seq: int) -> None:
    """Moves the cursor atomically: a crash leaves the old one or the new one, never half."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(seq))
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--cursor", required=True, help="file keeping the last sequence processed")
    ap.add_argument("--out", required=True, help="file the events are appended to (JSON lines)")
    ap.add_argument("--max", type=int, default=0, help="stop after this many events (0: follow)")
    ap.add_argument("--idle", type=float, default=0, help="stop after this many seconds (0: never)")
    args = ap.parse_args()

    creds = grpc.ssl_channel_credentials(
        root_certificates=pathlib.Path(args.ca).read_bytes(),
        private_key=pathlib.Path(args.key).read_bytes(),
        certificate_chain=pathlib.Path(args.cert).read_bytes(),
    )
    channel = grpc.secure_channel(args.addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    feed = partner_pb2_grpc.PartnerServiceStub(channel)
    cursor = pathlib.Path(args.cursor)
    start = read_cursor(cursor) + 1
    print(f"resuming from sequence {start}")
    stream = feed.WatchEvents(pb.WatchEventsRequest(from_sequence=start),
                              timeout=args.idle if args.idle else None)
    seen = 0
    try:
        with open(args.out, "a") as out:
            for event in stream:
                # Process first (here: keep it), then acknowledge it by moving the cursor.
                out.write(json.dumps(json_format.MessageToDict(event)) + "\n")
                out.flush()
                write_cursor(cursor, event.sequence)
                seen += 1
                if args.max and seen >= args.max:
                    stream.cancel()
                    break
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            pass  # --idle: nothing more for now
        elif err.code() != grpc.StatusCode.CANCELLED:
            print(f"refused: {err.code().name} {till.reason(err)}: {err.details()}")
            return 1
    print(f"processed {seen} events, cursor at {read_cursor(cursor)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
