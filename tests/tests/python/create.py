"""Sends ContainerGroups/Create requests with grpcio's default options (no stubs: each
request is a file of encoded CreateGroupRequest bytes) and prints, per file, the status
code grpcio reads and the length of the message.

Usage: create.py SOCKET FILE... Prints `FILE CODE LENGTH DETAILS-PREFIX` per line.
"""

import sys

import grpc


def main():
    socket = sys.argv[1]
    with grpc.insecure_channel("unix://" + socket) as channel:
        create = channel.unary_unary("/eci.v1.ContainerGroups/Create")
        for path in sys.argv[2:]:
            with open(path, "rb") as f:
                request = f.read()
            try:
                create(request, timeout=60)
                print(path, "OK", 0, "")
            except grpc.RpcError as e:
                details = e.details() or ""
                print(path, e.code().name, len(details.encode()), details[:300].replace("\n", " "))


if __name__ == "__main__":
    main()
