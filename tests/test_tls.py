"""TLS and mTLS to a relay: works when right, fails closed with one line naming the relay when not."""

from __future__ import annotations

import shutil

import grpc
import pytest
from certs import RELAY_NAME, relay_pki
from test_collect import Running, config, make_responses, stored, stored_count, wait_for

from flowpipe.api.observer import observer_pb2
from flowpipe.ingest.collector import CollectError
from flowpipe.ingest.config import TLSConfig
from flowpipe.serve.replay import ReplayServer
from flowpipe.serve.server import ServerTLS

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return relay_pki(tmp_path_factory.mktemp("pki"))


def tls_config(address: str, **tls) -> object:
    cfg = config(("c1", address))
    cfg.relays[0].tls = TLSConfig(enabled=True, **tls)
    return cfg


def run_until_fatal(cfg, store) -> str:
    run = Running(cfg, store)
    with run:
        run.thread.join(20)
        assert not run.thread.is_alive(), "collector kept retrying instead of refusing"
    assert isinstance(run.result, CollectError), run.result
    return str(run.result)


def test_tls_with_server_name_override(pki, store):
    server = ServerTLS(str(pki["server"].cert), str(pki["server"].key))
    with ReplayServer(responses=make_responses(50), follow=True, tls=server) as relay:
        cfg = tls_config(relay.address, ca_files=[str(pki["ca"].path)], server_name=RELAY_NAME)
        with Running(cfg, store) as run:
            wait_for(lambda: stored_count(run, "c1") == 50, what="flows over TLS")
            assert run.stop() == 0


def test_mtls(pki, store):
    """A relay that demands a client certificate gets the configured one: every flow arrives,
    and the same relay refuses a client without it (so the certificate is what let us in)."""
    server = ServerTLS(
        str(pki["server"].cert), str(pki["server"].key), client_ca_file=str(pki["ca"].path)
    )
    sent = make_responses(50)
    with ReplayServer(responses=sent, follow=True, tls=server) as relay:
        cfg = tls_config(
            relay.address,
            ca_files=[str(pki["ca"].path)],
            server_name=RELAY_NAME,
            cert_file=str(pki["client"].cert),
            key_file=str(pki["client"].key),
        )
        with Running(cfg, store) as run:
            wait_for(lambda: stored_count(run, "c1") == 50, what="flows over mTLS")
            assert run.metric("flowpipe_collector_relay_connected", cluster="c1") == 1
            assert run.stop() == 0
        # the control: the same CA and server name, no client certificate
        creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"].path.read_bytes())
        options = [("grpc.ssl_target_name_override", RELAY_NAME)]
        with grpc.secure_channel(relay.address, creds, options=options) as channel:
            call = channel.unary_stream(
                "/observer.Observer/GetFlows",
                request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
            )(observer_pb2.GetFlowsRequest(), timeout=10)
            with pytest.raises(grpc.RpcError) as refused:
                next(iter(call))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sorted(f.uuid for f in stored(store)) == sorted(r.flow.uuid for r in sent)


@pytest.mark.parametrize(
    "case",
    ["wrong-ca", "wrong-server-name", "expired", "plaintext-server", "missing-key", "not-pem"],
)
def test_tls_fails_closed(pki, store, tmp_path, case):
    server_pair = pki["expired"] if case == "expired" else pki["server"]
    tls = (
        None
        if case == "plaintext-server"
        else ServerTLS(str(server_pair.cert), str(server_pair.key))
    )
    ca = pki["other_ca"].path if case == "wrong-ca" else pki["ca"].path
    kwargs = {
        "ca_files": [str(ca)],
        "server_name": "relay.example.com" if case == "wrong-server-name" else RELAY_NAME,
    }
    if case == "missing-key":
        kwargs.update(cert_file=str(pki["client"].cert), key_file=str(tmp_path / "absent.key"))
    if case == "not-pem":
        bogus = tmp_path / "ca.crt"
        bogus.write_text("hello")
        kwargs["ca_files"] = [str(bogus)]
    with ReplayServer(responses=make_responses(5), follow=True, tls=tls) as relay:
        msg = run_until_fatal(tls_config(relay.address, **kwargs), store)
    assert msg.startswith(f"relay c1 ({relay.address}): ")
    assert "\n" not in msg
    expected = {
        "missing-key": "cannot read client key",
        "not-pem": "is not a PEM file",
    }.get(case, "TLS handshake failed")
    assert expected in msg, msg
    assert stored_count_zero(store)


def stored_count_zero(store) -> bool:
    return store.files() == []


def test_relay_demanding_a_client_cert_is_reported(pki, store):
    """Without a client certificate the relay hangs up after the handshake, which looks like any
    dropped connection to a client: it is logged and counted, and retried, never connected."""
    server = ServerTLS(
        str(pki["server"].cert), str(pki["server"].key), client_ca_file=str(pki["ca"].path)
    )
    with ReplayServer(responses=make_responses(5), follow=True, tls=server) as relay:
        cfg = tls_config(relay.address, ca_files=[str(pki["ca"].path)], server_name=RELAY_NAME)
        with Running(cfg, store) as run:
            wait_for(
                lambda: (
                    run.metric(
                        "flowpipe_collector_stream_errors_total", cluster="c1", code="UNAVAILABLE"
                    )
                    >= 2
                ),
                what="refused attempts",
            )
            assert run.metric("flowpipe_collector_relay_connected", cluster="c1") == 0
            run.stop()
    assert store.files() == []


def test_rotated_certificates_used_at_next_reconnect(pki, store, tmp_path):
    """Files are read at every dial: replacing them on disk needs no restart."""
    ca_path = tmp_path / "ca.crt"
    shutil.copy(pki["ca"].path, ca_path)
    server = ServerTLS(str(pki["server"].cert), str(pki["server"].key))
    with ReplayServer(responses=make_responses(40), follow=True, tls=server) as relay:
        cfg = tls_config(relay.address, ca_files=[str(ca_path)], server_name=RELAY_NAME)
        with Running(cfg, store) as run:
            wait_for(lambda: stored_count(run, "c1") == 40, what="first flows")
            # rotate: the CA file now holds a CA that does not sign the server: reconnects must fail
            shutil.copy(pki["other_ca"].path, ca_path)
            relay.stop()
            relay.restart()
            wait_for(
                lambda: (
                    run.metric(
                        "flowpipe_collector_stream_errors_total", cluster="c1", code="UNAVAILABLE"
                    )
                    >= 2
                ),
                what="handshake failures after rotation",
            )
            assert run.metric("flowpipe_collector_relay_connected", cluster="c1") == 0
            # rotate back: the next dial picks it up without restarting the collector
            shutil.copy(pki["ca"].path, ca_path)
            relay.feed(make_responses(10, seed=7))
            wait_for(lambda: stored_count(run, "c1") == 50, what="flows after rotating back")
            run.stop()
