#!/usr/bin/env python3
"""A till's day against the coalition daemon, in Python with grpcio.

Loads the project's proto/ at run time (generated into ./_gen, which git ignores), connects with a
partner certificate over mTLS, and plays a day: an earn on a purchase, a burn retried after a
timeout with the same transaction id, a partial return, the balance and the activity list, and a
refusal handled by its google.rpc.ErrorInfo reason (never by the message text).
"""

import argparse
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
GEN = HERE / "_gen"


def generate():
    """Compiles proto/coalition/v1/*.proto into ./_gen and makes it importable."""
    import grpc_tools
    from grpc_tools import protoc

    GEN.mkdir(exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "coalition" / "v1").glob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{PROTO}", f"-I{well_known}", f"--python_out={GEN}",
                      f"--grpc_python_out={GEN}", *protos])
    if rc != 0:
        sys.exit(f"protoc failed on {PROTO} ({rc})")
    sys.path.insert(0, str(GEN))


generate()

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402
from coalition.v1 import partner_pb2 as pb  # noqa: E402
from coalition.v1 import partner_pb2_grpc  # noqa: E402


def reason(err: grpc.RpcError) -> str:
    """The ErrorInfo reason of a refusal ("" if it carries none)."""
    status = rpc_status.from_call(err)
    if status is None:
        return ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--addr", required=True, help="host:port of the daemon")
    ap.add_argument("--ca", required=True, help="the coalition CA (PEM)")
    ap.add_argument("--cert", required=True, help="the partner's certificate (PEM)")
    ap.add_argument("--key", required=True, help="the partner's private key (PEM)")
    ap.add_argument("--member", required=True, help="the member at the till")
    ap.add_argument("--run", default="py", help="prefix of this day's transaction ids")
    args = ap.parse_args()

    creds = grpc.ssl_channel_credentials(
        root_certificates=pathlib.Path(args.ca).read_bytes(),
        private_key=pathlib.Path(args.key).read_bytes(),
        certificate_chain=pathlib.Path(args.cert).read_bytes(),
    )
    # The daemon's certificate names localhost.
    channel = grpc.secure_channel(args.addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    till = partner_pb2_grpc.PartnerServiceStub(channel)
    ids = lambda name: f"{args.run}-{name}"  # noqa: E731

    # 1. A sale: points on the purchase.
    sale = till.Earn(pb.EarnRequest(transaction_id=ids("sale-1"), member_id=args.member,
                                    purchase=pb.Money(amount="42.50", currency="EUR")), timeout=10).receipt
    print(f"sale: earned {sale.points} points, balance {sale.balance_after}")

    # 2. A redemption whose first attempt times out: retry with the same transaction id. Whether
    #    or not the first attempt reached the daemon, the points are spent once.
    redeem = pb.BurnRequest(transaction_id=ids("redeem-1"), member_id=args.member, points=20)
    try:
        till.Burn(redeem, timeout=0.000001)
        print("redeem: first attempt answered")
    except grpc.RpcError as e:
        # grpcio reports a deadline that passed before the call went out as CANCELLED
        # ("Timeout expired"), one that passed in flight as DEADLINE_EXCEEDED: either way, no
        # answer — and the call may or may not have been applied.
        if e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            raise
        print("redeem: first attempt timed out; retrying with the same transaction id")
    burned = till.Burn(redeem, timeout=10).receipt
    print(f"redeem: spent {burned.points} points, balance {burned.balance_after}")
    again = till.Burn(redeem, timeout=10).receipt
    assert again == burned, "a retry answers with the first receipt"
    print("redeem: a retry answered with the first receipt")

    # 3. A partial return: take back 10 points of the sale.
    back = till.ReverseEarn(pb.ReverseEarnRequest(transaction_id=ids("return-1"),
                                                  original_transaction_id=ids("sale-1"), points=10),
                            timeout=10).receipt
    print(f"return: took back {back.points} points, balance {back.balance_after}")

    # 4. The balance and the activity list.
    balance = till.GetBalance(pb.GetBalanceRequest(member_id=args.member), timeout=10)
    activity = till.ListMemberActivity(pb.ListMemberActivityRequest(member_id=args.member, page_size=10),
                                       timeout=10)
    kinds = [pb.TransactionKind.Name(t.receipt.kind) for t in activity.transactions]
    print(f"activity: {len(kinds)} transactions, newest first: {', '.join(kinds)}")

    # 5. A refusal, handled by its reason.
    try:
        till.Burn(pb.BurnRequest(transaction_id=ids("too-much"), member_id=args.member,
                                 points=balance.points + 1_000_000), timeout=10)
        print("error: a burn beyond the balance was accepted")
        return 1
    except grpc.RpcError as e:
        if reason(e) != "INSUFFICIENT_POINTS":
            raise
        print(f"refused as expected: {reason(e)} ({e.code().name})")

    print(f"final balance: {balance.points}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
