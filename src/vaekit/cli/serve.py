"""``vaekit serve RUN``: the HTTP service and the latent-space explorer page over a trained run."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..errors import ConfigError, VaekitError
from ..names import TOKEN_ENV
from .common import DEVICE_HELP, add_data_options, load_run, load_run_data_or_own, positive_int

if TYPE_CHECKING:
    from ..api import VAE


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="an HTTP service and an interactive latent-space explorer in the browser",
                              description="Serve a trained run over HTTP: a JSON API (OpenAPI schema at /openapi.json) "
                                          "to sample, decode, encode, reconstruct, score and interpolate, and an "
                                          "explorer page at / with sliders for the most informative latent dimensions. "
                                          "Listens on 127.0.0.1 (this machine only) unless --host says otherwise, "
                                          "answers only to loopback host names (and --allowed-host) and refuses other "
                                          "origins; beyond loopback it needs --token. Needs pip install "
                                          "'vaekit[serve]'.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--data", metavar="DATA",
                   help="reference data: ranks the latent dimensions, gives anomaly scores a percentile, supplies "
                        "examples (default: the run's own data, its test split)")
    p.add_argument("--no-data", dest="use_data", action="store_false", help="start without reference data")
    p.add_argument("--reference-size", type=positive_int, default=1000,
                   help="use a seeded random subset of at most this many reference examples (default 1000)")
    p.add_argument("--num-importance-samples", type=positive_int, default=100,
                   help="importance samples for log-likelihood scores (default 100; a saved detector's setting wins)")
    access = p.add_argument_group("access")
    access.add_argument("--token", help=f"a secret every request must carry (Authorization: Bearer TOKEN, or the "
                                        f"cookie the printed link sets); default ${TOKEN_ENV}; required unless the "
                                        "host is loopback or --no-auth is given")
    access.add_argument("--allowed-host", metavar="NAME", action="append", default=[],
                        help="also answer to this host name (repeatable): the names clients reach the service by, "
                             "beyond localhost, 127.0.0.1 and ::1")
    access.add_argument("--no-auth", action="store_true",
                        help="serve beyond loopback without a token: anyone who can reach the address can use it")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-upload-mb", type=float, default=4.0, help="largest request body, MiB (default 4)")
    limits.add_argument("--max-image-pixels", type=positive_int, default=4096 * 4096,
                        help="largest uploaded image, width x height (default 16777216)")
    limits.add_argument("--max-samples", type=positive_int, default=256, help="most samples per request (default 256)")
    limits.add_argument("--max-batch", type=positive_int, default=256,
                        help="most latent vectors or uploaded examples per request (default 256)")
    limits.add_argument("--max-pending", type=positive_int, default=32,
                        help="most requests waiting for the model; more get 503 (default 32)")
    limits.add_argument("--max-connections", type=positive_int, default=64,
                        help="most open connections; more get 503 (default 64)")
    p.add_argument("--access-log", action="store_true", help="print one line per request")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_data_options(p)
    p.set_defaults(func=serve)


def load_reference(spec: str | None, vae: VAE, run: str, data_dir: str | None = None, size: int = 1000):
    """Reference examples for the explorer: ``spec`` (default the run's own test split), a seeded subset of ``size``.

    Runs trained on binarized data get the examples before binarization: they are what a person would
    upload, and the anomaly scores binarize them the way the run did.
    """
    from ..data import parse_spec, to_original_units
    from ..serve import ReferenceData

    x, labels, dataset, spec = load_run_data_or_own(spec, vae, run, data_dir, "with --data")
    split = parse_spec(spec)[1] or ("test" if dataset.order is None else "all")
    if dataset.config.binarize != "none":
        unbinarized = dataclasses.replace(dataset, config=dataclasses.replace(dataset.config, binarize="none"))
        x = to_original_units(unbinarized.split(split).numpy(), vae.config_.data)
    return ReferenceData(x, spec, labels, dataset.class_names).subset(size)


def access_options(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The host names to answer to and the token (None: none) from the options, or a ConfigError saying what to do."""
    from ..serve.security import allowed_host_name, check_token, is_loopback, is_wildcard, require_token_off_loopback

    if args.no_auth and args.token is not None:
        raise ConfigError("--no-auth and --token contradict each other: give one of them")
    token = None if args.no_auth else (args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None)
    check_token(token)
    require_token_off_loopback(args.host, token, args.no_auth)
    hosts = [allowed_host_name(name) for name in args.allowed_host]
    if not is_loopback(args.host) and not is_wildcard(args.host):
        hosts.append(args.host)  # the address (or name) it listens on; binding the socket checks that it is one
    return hosts, token


def serve(args: argparse.Namespace) -> int:
    from ..serve import Explorer, ServeLimits, require_serve_packages
    from ..serve.security import is_loopback

    allowed_hosts, token = access_options(args)  # a missing token is the first thing to hear about
    require_serve_packages()  # before the model is loaded: a missing package is the next thing to hear about
    from ..serve import create_app, server

    limits = ServeLimits(max_upload_bytes=max(1, int(args.max_upload_mb * 2**20)), max_image_pixels=args.max_image_pixels,
                         max_samples=args.max_samples, max_latent_batch=args.max_batch, max_pending=args.max_pending,
                         max_connections=args.max_connections)
    sock = server.bind_socket(args.host, args.port)  # fail on a taken port before the slow start-up
    vae = load_run(args.run, device=args.device)
    reference = None
    if args.use_data:
        try:
            reference = load_reference(args.data, vae, args.run, args.data_dir, args.reference_size)
        except VaekitError as err:
            if args.data is not None:  # asked for by name: that must work
                sock.close()
                raise
            print(f"vaekit: note: serving without reference data ({err})", file=sys.stderr)
    explorer = Explorer.from_run(args.run, vae=vae, reference=reference, device=args.device, limits=limits,
                                 num_importance_samples=args.num_importance_samples)
    try:
        app = create_app(explorer, allowed_hosts=allowed_hosts, token=token)
    except VaekitError:
        sock.close()
        raise
    if not is_loopback(args.host):
        if token is None:
            print(f"vaekit: warning: listening on {args.host} without authentication (--no-auth): anyone who can "
                  "reach this address can use it", file=sys.stderr)
        else:
            print(f"vaekit: note: listening on {args.host}: plain HTTP, the token is not encrypted on the way; across "
                  "networks you do not trust put a TLS proxy in front", file=sys.stderr)
    url = server.url_of(sock)
    print(f"vaekit: serving {args.run} at {url} (OpenAPI schema at /openapi.json); Ctrl-C stops", flush=True)
    if token is not None:
        print(f"vaekit: open {url}?token={quote(token, safe='')} in a browser: it sets a session cookie for the page; "
              "API clients send 'Authorization: Bearer TOKEN'", flush=True)
    try:
        server.run(app, sock, max_connections=limits.max_connections, access_log=args.access_log)
    except KeyboardInterrupt:  # uvicorn has shut down cleanly and passes Ctrl-C on
        pass
    print("vaekit: stopped", file=sys.stderr)
    return 0
