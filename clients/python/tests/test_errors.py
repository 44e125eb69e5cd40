"""Errors raise WhatisupError subclasses with the contract's code, message and details."""

import grpc
import pytest

import whatisup
from whatisup._errors import ERROR_INFO_TYPE, ErrorInfo, RpcStatus, from_rpc_error
from conftest import unique


def test_unknown_key_is_auth_error(target):
    with whatisup.Client("zpk_test_" + "A" * 43, target=target) as c:
        with pytest.raises(whatisup.AuthError) as e:
            list(c.channels.list())
    assert e.value.code == "auth_invalid"
    assert e.value.grpc_code == grpc.StatusCode.UNAUTHENTICATED
    assert e.value.message


def test_malformed_key_is_auth_error(target):
    with whatisup.Client("not-a-key", target=target) as c:
        with pytest.raises(whatisup.AuthError) as e:
            c.channels.get("ch_x")
    assert e.value.code == "auth_malformed"
    assert isinstance(e.value, whatisup.WhatisupError)


def test_unknown_channel_is_not_found(client):
    with pytest.raises(whatisup.NotFound) as e:
        client.channels.get("ch_01AAAAAAAAAAAAAAAAAAAAAAAA")
    assert e.value.code == "channel_not_found"
    assert e.value.details == {"channel_id": "ch_01AAAAAAAAAAAAAAAAAAAAAAAA"}
    assert e.value.request_id and e.value.request_id.startswith("req_")
    assert str(e.value).startswith("channel_not_found: ")


def test_unknown_channel_on_the_event_stream_is_raised_not_retried(client):
    stream = client.events.stream(channel_id="ch_01AAAAAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(whatisup.NotFound) as e:
        next(stream)
    assert e.value.code == "channel_not_found"
    assert stream.reconnects == 0


def test_invalid_request_names_the_field(client, connected_channel):
    with pytest.raises(whatisup.InvalidRequest) as e:
        client.messages.send(connected_channel.id, "not a number", text="hi")
    assert e.value.code == "invalid_request"
    assert e.value.details["field"] == "to"


def test_send_on_a_pending_channel_is_conflict(client):
    ch = client.channels.create(unique())
    with pytest.raises(whatisup.Conflict) as e:
        client.messages.send(ch.id, "+15551234567", text="too early")
    assert e.value.code == "not_connected"


def test_unreachable_gateway_is_unavailable():
    # Port 9 (discard): nothing listens there.
    with whatisup.Client("zpk_test_" + "A" * 43, target="127.0.0.1:9", timeout=5) as c:
        with pytest.raises((whatisup.Unavailable, whatisup.DeadlineExceeded)) as e:
            c.channels.get("ch_x")
    assert e.value.code in ("unavailable", "deadline_exceeded")


class FakeRpcError(grpc.RpcError):
    """A failed call as grpcio reports it (the gateway's rate limit is not exhausted by this suite)."""

    def __init__(self, status, message, trailing):
        self._status, self._message, self._trailing = status, message, trailing

    def code(self):
        return self._status

    def details(self):
        return self._message

    def trailing_metadata(self):
        return self._trailing

    def initial_metadata(self):
        return ()


def status_bin(reason, metadata):
    st = RpcStatus(code=8, message="rate limit exceeded")
    st.details.add(
        type_url=ERROR_INFO_TYPE,
        value=ErrorInfo(reason=reason, domain="whatisup", metadata=metadata).SerializeToString(),
    )
    return st.SerializeToString()


def test_rate_limited_mapping():
    err = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "rate limit exceeded",
            (("grpc-status-details-bin", status_bin("rate_limited", {"retry_after": "3"})), ("x-request-id", "req_1")),
        )
    )
    assert isinstance(err, whatisup.RateLimited)
    assert (err.code, err.retry_after, err.request_id) == ("rate_limited", 3.0, "req_1")
    # Without details: the gRPC status decides, and a retry-after trailer gives the wait.
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow", (("retry-after", "2"),)))
    assert isinstance(err, whatisup.RateLimited) and err.retry_after == 2.0 and err.code == "resource_exhausted"
    # A garbled trailer does not hide the error.
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone", (("grpc-status-details-bin", b"\xff"),)))
    assert isinstance(err, whatisup.NotFound) and err.message == "gone"
