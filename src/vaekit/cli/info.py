"""``vaekit info RUN``: what a run holds, how it was trained and how far it got."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="describe a run directory",
                              description="Describe a run: data, model, training settings and the last metrics.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=info)


def info(args: argparse.Namespace) -> int:
    from ..training import checkpoint as ckpt
    from ..training.trainer import starts_at_the_marginal

    model, config = ckpt.load_model(args.run)
    history = ckpt.read_metrics(args.run)
    pointer = ckpt.read_pointer(args.run)
    params = sum(p.numel() for p in model.parameters())
    summary = {
        "run": str(args.run),
        "config": config.to_dict(),
        "parameters": params,
        "epochs_done": len(history),
        "last_epoch": history[-1] if history else None,
        "best_val_neg_elbo": min((h["val_neg_elbo"] for h in history if h.get("val_neg_elbo") is not None), default=None),
        "global_step": pointer["global_step"] if pointer else None,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    m, d, t = config.model, config.data, config.train
    print(f"run          {args.run}")
    print(f"data         {d.source}  (kind {d.kind}, shape {tuple(m.input_shape)}, binarize {d.binarize}"
          + (", standardized" if d.standardize_mean is not None else "") + ")")
    upper = (f", upper layers {','.join(map(str, m.upper_latent_dims))} (hidden {','.join(map(str, m.upper_hidden))}, {m.inference} inference)"
             if m.upper_latent_dims else "")
    prior = f"vamp ({m.vamp_components} pseudo-inputs)" if m.prior == "vamp" else m.prior
    residual = f" ({m.residual_blocks} residual blocks per resolution)" if m.residual_blocks else ""
    print(f"model        {m.arch} hidden {','.join(map(str, m.hidden))}{residual}, latent {m.latent_dim}{upper}, "
          f"likelihood {m.likelihood}, prior {prior}, {params:,} parameters")
    if m.num_classes:
        print(f"conditional  on {m.num_classes} classes: {', '.join(m.class_names[:20])}"
              + (" ..." if m.num_classes > 20 else ""))
    print(f"training     {t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g} ({t.lr_schedule}), objective {t.objective}"
          + (f" (k={t.objective_samples})" if t.objective_samples > 1 else "")
          + f", kl weight {t.kl_weight}, warm-up {t.warmup_epochs} epochs"
          + (f", free bits {t.free_bits}" if t.free_bits else "")
          + (f", inputs perturbed at rate {t.perturb_rate} (a background model)" if t.perturb_rate else "")
          + (", output bias from the data" if starts_at_the_marginal(config) and model.likelihood.has_marginal
             else ", output bias from pytorch")
          + f" (output-init {t.output_init})"
          + f", seed {t.seed}")
    if history:
        last = history[-1]
        print(f"progress     {len(history)}/{t.epochs} epochs, step {last['step']}")
        validated = [h for h in history if h.get("val_neg_elbo") is not None]  # validation runs on a schedule
        if validated:
            v = validated[-1]
            print(f"last checked validation -ELBO {v['val_neg_elbo']:.3f} nats/example "
                  f"(reconstruction {v['val_reconstruction']:.3f} + KL {v['val_kl']:.3f}), epoch {v['epoch']}")
            print(f"best         validation -ELBO {summary['best_val_neg_elbo']:.3f} nats/example")
    return 0
