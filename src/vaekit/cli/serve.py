"""``vaekit serve RUN``: the HTTP service and the latent-space explorer page over a trained run."""

from __future__ import annotations

import argparse
import sys

import dataclasses

from ..api import VAE
from ..data import parse_spec, to_original_units
from ..errors import VaekitError
from .common import add_data_options, load_run, load_run_data_or_own, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="an HTTP service and an interactive latent-space explorer in the browser",
                              description="Serve a trained run over HTTP: a JSON API (OpenAPI schema at /openapi.json, "
                                          "docs at /docs) to sample, decode, encode, reconstruct, score and interpolate, "
                                          "and an explorer page at / with sliders for the most informative latent "
                                          "dimensions. Listens on 127.0.0.1 (this machine only) unless --host says "
                                          "otherwise. Needs pip install 'vaekit[serve]'.")
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
    p.add_argument("--device", default="cpu")
    add_data_options(p)
    p.set_defaults(func=serve)


def load_reference(spec: str | None, vae: VAE, run: str, data_dir: str | None = None, size: int = 1000):
    """Reference examples for the explorer: ``spec`` (default the run's own test split), a seeded subset of ``size``.

    Runs trained on binarized data get the examples before binarization: they are what a person would
    upload, and the anomaly scores binarize them the way the run did.
    """
    from ..serve import ReferenceData

    x, labels, dataset, spec = load_run_data_or_own(spec, vae, run, data_dir, "with --data")
    split = parse_spec(spec)[1] or ("test" if dataset.order is None else "all")
    if dataset.config.binarize != "none":
        unbinarized = dataclasses.replace(dataset, config=dataclasses.replace(dataset.config, binarize="none"))
        x = to_original_units(unbinarized.split(split).numpy(), vae.config_.data)
    return ReferenceData(x, spec, labels, dataset.class_names).subset(size)


def serve(args: argparse.Namespace) -> int:
    from ..serve import Explorer, ServeLimits, require_serve_packages

    require_serve_packages()  # before the model is loaded: a missing package is the first thing to hear about
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
    app = create_app(explorer)
    if not server.is_loopback(args.host):
        print(f"vaekit: warning: listening on {args.host}: the service has no authentication, anyone who can reach "
              "this address can use it", file=sys.stderr)
    print(f"vaekit: serving {args.run} at {server.url_of(sock)} (API docs at /docs); Ctrl-C stops", flush=True)
    try:
        server.run(app, sock, max_connections=limits.max_connections, access_log=args.access_log)
    except KeyboardInterrupt:  # uvicorn has shut down cleanly and passes Ctrl-C on
        pass
    print("vaekit: stopped", file=sys.stderr)
    return 0
