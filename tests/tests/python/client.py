"""Drives the agent's socket with grpcio (no generated stubs: raw protobuf bytes).

Usage: client.py SOCKET [AUTHORITY]. With no AUTHORITY the channel has grpcio's default
options, so the `:authority` is whatever this grpcio sends over a Unix socket (1.51, in
Debian 12, sends `localhost`); AUTHORITY forces another through grpc.default_authority.
"""

import sys

import grpc

SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}
LIST_SERVICES = b"\x3a\x00"  # ServerReflectionRequest{list_services: ""}


def field1(s):
    b = s.encode()
    return b"\x0a" + bytes([len(b)]) + b


def main():
    socket = sys.argv[1]
    options = []
    if len(sys.argv) > 2:
        options.append(("grpc.default_authority", sys.argv[2]))
    with grpc.insecure_channel("unix://" + socket, options=options) as channel:
        health = channel.unary_unary("/grpc.health.v1.Health/Check")
        for service in ("", "eci.v1.ContainerGroups"):
            answer = health(field1(service) if service else b"", timeout=20)
            assert answer == SERVING, (service, answer)
        print("health: SERVING")

        for version in ("v1alpha", "v1"):
            info = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
            )
            answers = list(info(iter([LIST_SERVICES]), timeout=20))
            assert len(answers) == 1, answers
            for want in (b"eci.v1.ContainerGroups", b"grpc.health.v1.Health"):
                assert want in answers[0], (version, want, answers[0])
            print(f"reflection {version}: lists eci.v1.ContainerGroups")

        groups = channel.unary_unary("/eci.v1.ContainerGroups/List")
        _, call = groups.with_call(b"", timeout=20)
        assert call.code() == grpc.StatusCode.OK, call.code()
        print("ContainerGroups/List: OK")
    print("grpcio", grpc.__version__)


if __name__ == "__main__":
    main()
