"""Shared fixtures: a client of the gateway named by WHATISUP_TARGET / WHATISUP_API_KEY (a zpk_test_ key), and the
restart hook of the Rust harness (tests/client_python.rs) named by WHATISUP_TEST_CONTROL."""

import itertools
import os
import pathlib
import threading
import time
import uuid

import pytest

import whatisup


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: run this suite through `cargo test --features whatisup/fake-whatsapp --test "
            "client_python`, or set WHATISUP_TARGET and WHATISUP_API_KEY (a zpk_test_ key) of a gateway"
        )
    return value


@pytest.fixture(scope="session")
def target():
    return _env("WHATISUP_TARGET")


@pytest.fixture(scope="session")
def api_key():
    return _env("WHATISUP_API_KEY")


@pytest.fixture
def client(target, api_key):
    with whatisup.Client(api_key, target=target, timeout=20) as c:
        yield c


def unique(prefix="py"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(fn, what, timeout=20.0, every=0.1):
    """Polls fn() until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def wait_status(client, channel_id, status, timeout=20.0):
    def check():
        ch = client.channels.get(channel_id)
        return ch if ch.status == status else None

    return wait_for(check, f"channel {channel_id} to be {status}", timeout)


def connect_sandbox(client, name=None):
    """A connected test-mode channel: create, show the QR, let the simulated phone scan it."""
    ch = client.channels.create(name or unique())
    client.channels.qr(ch.id, wait=10)
    client.sandbox.scan(ch.id)
    return wait_status(client, ch.id, "connected")


@pytest.fixture
def connected_channel(client):
    return connect_sandbox(client)


def take(stream, n, timeout=30.0):
    """The next n events of an EventStream; fails (instead of hanging) when they do not come in time."""
    timer = threading.Timer(timeout, stream.close)
    timer.daemon = True
    timer.start()
    try:
        out = []
        for event in stream:
            out.append(event)
            if len(out) == n:
                return out
        raise AssertionError(f"the stream ended after {len(out)} of {n} events: {[e.event for e in out]}")
    finally:
        timer.cancel()


_restarts = itertools.count(1)


@pytest.fixture(scope="session")
def restart_gateway():
    """restart_gateway("kill" | "term"): the harness stops the gateway (SIGKILL or SIGTERM) and starts a new one on
    the same port and database; returns once it is ready."""
    control = os.environ.get("WHATISUP_TEST_CONTROL")
    if not control:
        pytest.skip("needs the restart hook of tests/client_python.rs (WHATISUP_TEST_CONTROL)")
    directory = pathlib.Path(control)

    def restart(mode="kill"):
        n = next(_restarts)
        tmp = directory / f"restart-{n}.tmp"
        tmp.write_text(mode)
        tmp.rename(directory / f"restart-{n}.request")
        done = directory / f"restart-{n}.done"
        wait_for(done.exists, f"gateway restart {n} ({mode})", timeout=60, every=0.05)

    return restart
