"""Commands that serve history over the Observer API: serve, replay."""

from __future__ import annotations

import click

from flowpipe.cli.base import _fail, handle_errors, main, open_store, setup_logging, store_option


def _server_tls(plaintext: bool, cert: str | None, key: str | None, client_ca: str | None):
    from flowpipe.serve.server import ServerTLS

    if plaintext:
        if cert or key or client_ca:
            _fail(
                "--plaintext cannot be combined with --tls-server-cert-file/--tls-server-key-file/--tls-client-ca-file"
            )
        return None
    if not (cert and key):
        _fail(
            "give --tls-server-cert-file and --tls-server-key-file, or --plaintext to serve without TLS"
        )
    return ServerTLS(cert, key, client_ca)


def _on_sigterm() -> None:
    import signal

    def stop(signum, frame):
        raise SystemExit(0)  # run the cleanup (temporary store) instead of dying mid-way

    signal.signal(signal.SIGTERM, stop)


def server_options(fn):
    """--listen and the TLS options shared by serve and replay."""
    opts = [
        click.option(
            "--listen",
            default="127.0.0.1:4245",
            show_default=True,
            metavar="HOST:PORT",
            help="Address to serve the Hubble Observer API on.",
        ),
        click.option(
            "--plaintext", is_flag=True, help="Serve without TLS (hubble observe without --tls)."
        ),
        click.option(
            "--tls-server-cert-file", "tls_cert", metavar="FILE", help="Server certificate (PEM)."
        ),
        click.option(
            "--tls-server-key-file", "tls_key", metavar="FILE", help="Server private key (PEM)."
        ),
        click.option(
            "--tls-client-ca-file",
            "tls_client_ca",
            metavar="FILE",
            help="Require client certificates signed by this CA (mTLS).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@main.command()
@store_option
@server_options
@handle_errors
def serve(store_path, listen, plaintext, tls_cert, tls_key, tls_client_ca) -> None:
    """Serve the store's flows over the Hubble Observer API, for `hubble observe`.

    Answers GetFlows like Hubble Relay (--last/--first/--since/--until/--follow and every
    filter flag) over all stored history and clusters; --follow streams newly collected flows.
    TLS is required unless --plaintext is given.

    Example:

    \b
        flowpipe serve --store ./store --listen 127.0.0.1:4245 --plaintext
        hubble observe --server localhost:4245 --since 2h --cluster cluster1 --verdict DROPPED
    """
    from flowpipe.serve import server as srv

    tls = _server_tls(plaintext, tls_cert, tls_key, tls_client_ca)
    store = open_store(store_path)
    setup_logging(quiet=False)  # a failed call is one ERROR line
    _on_sigterm()
    srv.serve(
        store,
        listen,
        tls=tls,
        on_ready=lambda port: click.echo(f"flowpipe serve: listening on port {port}", err=True),
    )


@main.command()
@click.argument("files", nargs=-1, required=True)
@server_options
@click.option(
    "--cluster",
    help="Cluster of every flow (default: node_name prefix 'cluster/node', else 'default').",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Every GetFlows gets all recorded flows, then stays open for new ones.",
)
@click.option(
    "--rate",
    type=float,
    default=0.0,
    metavar="N",
    help="Also play recorded flows at ~N flows/s, with new uuids and times.",
)
@click.option(
    "--abort-after",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Fault: end each GetFlows with UNAVAILABLE after N responses.",
)
@click.option(
    "--lost-events-every",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Fault: send a LostEvent (OBSERVER_EVENTS_QUEUE) after every N flows.",
)
@handle_errors
def replay(
    files,
    listen,
    plaintext,
    tls_cert,
    tls_key,
    tls_client_ca,
    cluster,
    follow,
    rate,
    abort_after,
    lost_events_every,
) -> None:
    """Play `hubble observe -o jsonpb` files back as a fake Hubble Relay (serve over a temporary store).

    Example:

    \b
        flowpipe replay capture.jsonl.gz --listen 127.0.0.1:4245 --plaintext --follow --rate 500
        hubble observe --server localhost:4245 --follow
    """
    from flowpipe.serve import replay as rp

    tls = _server_tls(plaintext, tls_cert, tls_key, tls_client_ca)
    _on_sigterm()
    rp.replay(
        list(files),
        listen,
        tls=tls,
        cluster=cluster,
        follow=follow,
        rate=rate,
        abort_after=abort_after,
        lost_events_every=lost_events_every,
        on_ready=lambda rs: click.echo(
            f"flowpipe replay: {rs.imported} flows on {rs.address}", err=True
        ),
    )
