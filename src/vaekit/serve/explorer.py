"""The model side of ``vaekit serve``, free of any web framework.

An ``Explorer`` wraps a fitted ``VAE`` (plus, optionally, reference data and a saved anomaly detector)
and answers what the service is asked: decode latent vectors, draw from the prior, read an uploaded
example, encode, reconstruct and score it, interpolate, and lay out the latent plane of a 2-D model.
A conditional model's methods take a ``label`` (a class name or index): required there, refused otherwise.
Every input is checked against the model and against ``ServeLimits`` first; what is wrong raises a
``DataError`` (the service answers 422), ``RequestTooLarge`` (413) or ``UnsupportedInput`` (415).
The model is used only through the public functions of ``vaekit.api``, ``vaekit.generation.latent`` and
``vaekit.anomaly``; none of them ever reads a path that came with a request.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..generation import latent
from ..anomaly import TypicalityModel, feature_contributions, load_typicality
from ..anomaly import DETECTOR_FILE, SCORE_DESCRIPTIONS, AnomalyDetector, anomaly_scores, default_score
from ..api import VAE, load
from ..data.labels import label_indices, resolve_label
from ..errors import ConfigError, DataError, VaekitError
from ..plots import image_grid


class RequestTooLarge(DataError):
    """The request is larger than a limit allows (HTTP 413)."""


class UnsupportedInput(DataError):
    """The upload is of a kind the model cannot take (HTTP 415)."""


# Image formats an upload may be in. Pillow would also open formats that run external programs
# (EPS through Ghostscript) or are rarely what a person means; those are refused.
UPLOAD_IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class ServeLimits:
    """Limits that keep the service up; each one refuses a request that exceeds it with a 4xx (or 503) answer."""

    max_upload_bytes: int = 4 * 1024 * 1024     # any request body, counted while it is read (413)
    max_image_pixels: int = 4096 * 4096         # decoded size of an uploaded image, checked before decoding (413)
    max_samples: int = 256                      # examples per sample / examples request (422)
    max_latent_batch: int = 256                 # latent vectors per decode, examples per upload (422)
    max_interpolation_steps: int = 64           # points on an interpolation path (422)
    max_map_steps: int = 32                     # cells per axis of the latent map (422)
    max_latent_abs: float = 100.0               # |z| per coordinate; the prior is N(0, I) (422)
    max_pending: int = 32                       # requests waiting for the model; more get 503 + Retry-After
    max_connections: int = 64                   # open connections and requests (uvicorn); more get 503

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"the limit {f.name} must be a positive number, got {value!r}")
            if f.type in ("int", int) and not isinstance(value, int):
                raise ConfigError(f"the limit {f.name} must be a whole number, got {value!r}")

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class ReferenceData:
    """Examples (in the data's original units) the explorer ranks dimensions on, scores against, and shows."""

    x: np.ndarray
    source: str
    labels: np.ndarray | None = None
    class_names: list[str] | None = None

    def subset(self, size: int, seed: int = 0) -> "ReferenceData":
        """A seeded random subset of at most ``size`` examples (all of them, in order, when there are fewer)."""
        if len(self.x) <= size:
            return self
        index = np.sort(np.random.default_rng(seed).choice(len(self.x), size=size, replace=False))
        labels = None if self.labels is None else self.labels[index]
        return ReferenceData(self.x[index], self.source, labels, self.class_names)

    def label_name(self, i: int) -> str | None:
        if self.labels is None:
            return None
        label = self.labels[i]
        if self.class_names is not None and isinstance(label, (int, np.integer)) and 0 <= int(label) < len(self.class_names):
            return str(self.class_names[int(label)])
        return str(label)


def png_base64(image: np.ndarray) -> str:
    """One image (channels, height, width) as a base64-encoded PNG at its own size."""
    return base64.b64encode(png_bytes(image[None], ncols=1, padding=0, scale=1)).decode("ascii")


def png_bytes(images: np.ndarray, ncols: int | None = None, padding: int = 2, scale: int | None = None) -> bytes:
    """Images (n, channels, height, width) tiled into one PNG file."""
    buffer = io.BytesIO()
    image_grid(images, ncols=ncols, padding=padding, scale=scale).save(buffer, format="PNG")
    return buffer.getvalue()


def _piecewise_linear(values: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``np.interp`` that extends the first and last segments linearly instead of clamping (``xp`` increasing)."""
    out = np.interp(values, xp, fp)
    low, high = values < xp[0], values > xp[-1]
    out[low] = fp[0] + (values[low] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    out[high] = fp[-1] + (values[high] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return out


class Explorer:
    """Everything the service does with one model, with every input validated.

    ``reference`` (optional) ranks the latent dimensions, gives the anomaly score a percentile, supplies
    examples to pick and dots for the latent map. ``detector`` is a fitted ``AnomalyDetector`` of this
    model whose score, settings and threshold are then used. Not thread-safe: the service calls it
    from one worker thread.
    """

    def __init__(self, vae: VAE, *, reference: ReferenceData | None = None, detector: AnomalyDetector | None = None,
                 detector_problem: str | None = None, num_importance_samples: int = 100,
                 limits: ServeLimits | None = None, run_name: str | None = None,
                 typicality: TypicalityModel | None = None) -> None:
        if num_importance_samples < 1:
            raise ConfigError(f"num_importance_samples must be at least 1, got {num_importance_samples}")
        self.vae = vae
        self.limits = limits or ServeLimits()
        self.run_name = run_name
        self.input_shape = tuple(vae.input_shape_)
        self.latent_dim = int(vae.latent_dim_)
        self.n_features = int(np.prod(self.input_shape))
        self.is_image = len(self.input_shape) == 3
        self.conditional = bool(vae.model_.conditional)
        self.classes = [str(c) for c in vae.classes_] if self.conditional else None
        columns = vae.config_.data.columns
        self.schema = vae.schema_  # a table run: rows of named, mixed columns
        if self.schema is not None:
            self.columns = list(self.schema.names)
        else:
            self.columns = list(columns) if columns and len(columns) == self.n_features else [f"x{i}" for i in range(self.n_features)]
        self.detector = detector
        self.detector_problem = detector_problem
        self.typicality = detector.typicality_ if detector is not None and detector.typicality_ is not None else typicality
        if detector is not None:
            self.score_name = detector.score_
            self.score_settings = {"num_importance_samples": detector.num_importance_samples,
                                   "compressor": detector.compressor, "seed": detector.seed}
        else:
            self.score_name = default_score(vae, self.typicality)
            self.score_settings = {"num_importance_samples": num_importance_samples, "compressor": "png", "seed": 0}
        self.reference = reference
        self._map_cache: dict[tuple[int, int | None], dict[str, Any]] = {}
        self.dimension_order = np.arange(self.latent_dim)
        self.dimension_kl: np.ndarray | None = None
        self.reference_means: np.ndarray | None = None
        self.reference_labels: np.ndarray | None = None  # a conditional model's: class indices of the examples
        self.reference_scores: np.ndarray | None = None
        if reference is not None:
            if tuple(reference.x.shape[1:]) != self.input_shape:
                raise DataError(f"the reference data has examples of shape {reference.x.shape[1:]} "
                                f"but the model expects {self.input_shape}")
            if self.conditional:
                if reference.labels is None:
                    raise DataError(f"this model is conditional, and the reference data ({reference.source}) have no "
                                    "labels; give labelled data, or start without reference data")
                self.reference_labels = label_indices(reference.labels, self.classes, reference.class_names)
                mean, variance = vae.encode(reference.x, self.reference_labels)
                self.reference_means = mean
                if len(reference.x) >= 2:  # as latent.informative_dimensions ranks them, each example under its label
                    mean, variance = mean.astype(np.float64), variance.astype(np.float64)
                    kl = (0.5 * (mean**2 + variance - np.log(variance) - 1.0)).mean(axis=0)
                    self.dimension_order = np.argsort(-kl, kind="stable")
                    self.dimension_kl = kl[self.dimension_order]
            else:
                self.reference_means = vae.transform(reference.x)
                if len(reference.x) >= 2:
                    self.dimension_order, self.dimension_kl = latent.informative_dimensions(vae, reference.x, by="kl")
            if len(reference.x) >= 2:
                self.reference_scores = np.sort(self._scores(reference.x, self.reference_labels)[self.score_name])

    @classmethod
    def from_run(cls, run: str | Path, *, vae: VAE | None = None, reference: ReferenceData | None = None,
                 device: str = "cpu", **kwargs: Any) -> "Explorer":
        """An explorer over a run directory (``vae``: the run, already loaded), with the run's anomaly detector
        when it has a valid one."""
        vae = load(run, device=device) if vae is None else vae
        detector, problem = None, None
        try:
            kwargs.setdefault("typicality", load_typicality(run, vae))
        except VaekitError as err:  # a stale typicality model must not keep the model from being served either
            problem = str(err)
        if (Path(run) / DETECTOR_FILE).is_file():
            try:
                detector = AnomalyDetector.load(run, device=device)
            except VaekitError as err:  # a stale detector must not keep the model from being served
                problem = str(err)
        return cls(vae, reference=reference, detector=detector, detector_problem=problem,
                   run_name=Path(run).name, **kwargs)

    # --- what the model is -----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Model, data, ranked latent dimensions, anomaly score and limits, for the page and API clients."""
        config = self.vae.config_
        history = self.vae.history_ or []
        last = history[-1] if history else {}
        dims = [{"index": int(d), "kl": None if self.dimension_kl is None else float(self.dimension_kl[i])}
                for i, d in enumerate(self.dimension_order)]
        detector = None
        if self.detector is not None:
            detector = {"threshold": float(self.detector.threshold_), "rule": self.detector.rule_,
                        "rate": float(self.detector.rate_)}
        return {
            "vaekit_version": __version__,
            "run": self.run_name,
            "data_source": config.data.source,
            "kind": "image" if self.is_image else "vector",
            "input_shape": list(self.input_shape),
            "columns": None if self.is_image else self.columns,
            "latent_dim": self.latent_dim,
            "conditional": self.conditional,
            "classes": self.classes,
            "arch": config.model.arch,
            "hidden": list(config.model.hidden),
            "likelihood": config.model.likelihood,
            "binarize": config.data.binarize,
            "epochs_trained": len(history),
            "val_neg_elbo": last.get("val_neg_elbo"),
            "dimensions": dims,
            "dimensions_ranked_by": "kl" if self.dimension_kl is not None else None,
            "reference": None if self.reference is None else {
                "source": self.reference.source, "size": int(len(self.reference.x)),
                "labels": self.reference.labels is not None},
            "anomaly": {"score": self.score_name, "description": SCORE_DESCRIPTIONS[self.score_name],
                        "higher_is_more_anomalous": True, "detector": detector,
                        "detector_problem": self.detector_problem,
                        "percentiles": self.reference_scores is not None, **self.score_settings},
            "limits": self.limits.as_dict(),
        }

    # --- outputs ---------------------------------------------------------------------------------
    def outputs(self, x: np.ndarray) -> dict[str, Any]:
        """Decoded examples as the API returns them: PNGs for images, rows with column names otherwise."""
        if self.is_image:
            return {"kind": "image", "images": [png_base64(image) for image in x], "rows": None, "columns": None}
        if self.schema is not None:  # a table: decoded rows (or encoded values) as JSON values, empty cells null
            from ..data.table import is_frame

            frame = x if is_frame(x) else self.schema.decode(np.asarray(x))
            rows = [[None if _is_missing(v) else (v.item() if isinstance(v, np.generic) else v) for v in row]
                    for row in frame[self.columns].astype(object).itertuples(index=False)]
            return {"kind": "vector", "images": None, "rows": rows, "columns": self.columns}
        rows = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if not np.isfinite(rows).all():
            raise DataError("the decoder produced non-finite values for these latent vectors")
        return {"kind": "vector", "images": None, "rows": rows.tolist(), "columns": self.columns}

    def png_grid(self, x: np.ndarray) -> bytes:
        """Decoded images tiled into one PNG (image models only)."""
        if not self.is_image:
            raise UnsupportedInput(f"this model's examples are vectors of {self.n_features} values, not images; "
                                   "ask the JSON endpoint for the rows")
        return png_bytes(x)

    # --- labels ----------------------------------------------------------------------------------
    def label(self, value: Any) -> int | None:
        """A request's label as a class index: required by a conditional model (a class name or an index), refused
        by an unconditional one; ``None`` for an unconditional model."""
        if not self.conditional:
            if value is not None:
                raise DataError("this model is not conditional, so it takes no label; leave label out")
            return None
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"this model is conditional: give a label, one of its {self._class_listing()} "
                            f"(or an index 0 to {len(self.classes) - 1})")
        return resolve_label(value, self.classes)

    def _class_listing(self) -> str:
        shown = ", ".join(self.classes[:12])
        return f"{len(self.classes)} classes: {shown}{' ...' if len(self.classes) > 12 else ''}"

    # --- latent vectors --------------------------------------------------------------------------
    def check_latents(self, z: Any, what: str = "z", batch: bool = True) -> np.ndarray:
        """Latent vectors as float32 (n, latent_dim) (or one vector (latent_dim,) with ``batch=False``), validated."""
        try:
            array = np.asarray(z, dtype=np.float64)
        except (ValueError, TypeError):
            raise DataError(f"{what} must be {'a list of latent vectors' if batch else 'one latent vector'} "
                            f"of {self.latent_dim} numbers each; its rows have different lengths") from None
        if batch and array.size == 0:
            raise DataError(f"{what} holds no latent vectors")
        expected = f"(n, {self.latent_dim})" if batch else f"({self.latent_dim},)"
        if (batch and (array.ndim != 2 or array.shape[1] != self.latent_dim)) or (not batch and array.shape != (self.latent_dim,)):
            raise DataError(f"{what} has shape {array.shape}; this model's latent vectors need shape {expected}")
        if batch and len(array) > self.limits.max_latent_batch:
            raise DataError(f"{what} holds {len(array)} latent vectors; at most {self.limits.max_latent_batch} per request")
        if not np.isfinite(array).all():
            raise DataError(f"{what} holds NaN or infinite values at {_first_position(~np.isfinite(array))}")
        too_far = np.abs(array) > self.limits.max_latent_abs
        if too_far.any():
            raise DataError(f"{what} has a value {array[tuple(np.argwhere(too_far)[0])]:g} at {_first_position(too_far)}; "
                            f"latent values must lie within +-{self.limits.max_latent_abs:g} (the prior is N(0, I))")
        return array.astype(np.float32)

    def decode(self, z: Any, label: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Validated latent vectors and the mean of p(x|z) (p(x|z, label)) for each, in the data's original units."""
        y = self.label(label)
        z = self.check_latents(z)
        return z, self.vae.decode(z, y=y)

    def sample(self, n: int, seed: int | None = None, label: Any = None) -> tuple[np.ndarray, np.ndarray, int]:
        """``n`` draws z ~ N(0, I) and their decodings, with the seed used (a fresh random one when ``None``).

        The draws are those of ``VAE.sample(n, seed=seed)`` (``y=label``), so the service and the library agree.
        """
        y = self.label(label)
        self._check_count(n, self.limits.max_samples, "samples")
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed)).numpy()
        return z, self.vae.decode(z, y=y), seed

    def interpolate(self, z_start: Any, z_end: Any, steps: int, method: str = "linear",
                    label: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``steps`` points from ``z_start`` to ``z_end`` (linear or spherical) and their decodings."""
        y = self.label(label)
        self._check_count(steps, self.limits.max_interpolation_steps, "interpolation steps", minimum=2)
        start = self.check_latents(z_start, "z_start", batch=False)
        end = self.check_latents(z_end, "z_end", batch=False)
        z = latent.interpolate_latents(start, end, steps, method)
        return z, self.vae.decode(z, y=y)

    def examples(self, n: int, seed: int | None = None) -> dict[str, Any]:
        """``n`` random examples of the reference data with their latent means and labels."""
        if self.reference is None or self.reference_means is None:
            raise DataError("the service has no reference data; start it with --data DATA")
        self._check_count(n, self.limits.max_samples, "examples")
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        count = min(n, len(self.reference.x))
        index = np.random.default_rng(seed).choice(len(self.reference.x), size=count, replace=False)
        return {"indices": index.tolist(), "seed": seed, "z": self.reference_means[index].tolist(),
                "labels": [self.reference.label_name(int(i)) for i in index],
                "outputs": self.outputs(self.reference.x[index])}

    def latent_map(self, steps: int, label: Any = None) -> dict[str, Any]:
        """For a 2-D latent: the decoded grid over the prior's quantiles, its axes, and the reference points on it.

        Positions are fractions of the map's width and height; between cell centres z changes linearly,
        so a click at (u, v) decodes the z that ``z1_axis``/``z2_axis`` give there by the same rule. A conditional
        model decodes the grid under ``label``; the points are the reference examples' means under their own labels.
        """
        y = self.label(label)
        if self.latent_dim != 2:
            raise DataError(f"the latent map needs a 2-D latent; this model's latent has {self.latent_dim} dimensions")
        self._check_count(steps, self.limits.max_map_steps, "map steps per axis", minimum=2)
        if (steps, y) in self._map_cache:
            return self._map_cache[(steps, y)]
        if y is None:
            grid, decoded = latent.manifold(self.vae, steps=steps)
        else:  # latent.manifold, decoded under the label
            grid = latent.prior_quantile_grid(self.vae, steps)
            z = grid.reshape(-1, 2)
            decoded = self.vae._decode_values(z, y=y) if self.vae.is_table_ else self.vae.decode(z, y=y)
        z1_axis, z2_axis = grid[0, :, 0].astype(np.float64), grid[:, 0, 1].astype(np.float64)  # z2 decreases downwards
        centres = (np.arange(steps) + 0.5) / steps
        points = None
        if self.reference_means is not None:
            means = self.reference_means.astype(np.float64)
            u = _piecewise_linear(means[:, 0], z1_axis, centres)
            v = _piecewise_linear(-means[:, 1], -z2_axis, centres)
            inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
            labels = [self.reference.label_name(int(i)) for i in np.flatnonzero(inside)]
            present = {label for label in labels if label is not None}
            names = self.reference.class_names
            classes = ([n for n in names if n in present] if names and present <= set(names)
                       else sorted(present, key=lambda t: (not t.lstrip("-").isdigit(), int(t) if t.lstrip("-").isdigit() else 0, t)))
            points = {"u": u[inside].tolist(), "v": v[inside].tolist(), "labels": labels, "classes": classes,
                      "outside": int((~inside).sum())}
        result = {"steps": steps, "z1_axis": z1_axis.tolist(), "z2_axis": z2_axis.tolist(), "points": points,
                  "image": png_base64_grid(decoded.reshape(steps * steps, *self.input_shape), steps)
                  if self.is_image else None}
        self._map_cache[(steps, y)] = result
        return result

    # --- uploads ---------------------------------------------------------------------------------
    def read_upload(self, data: bytes, invert: bool = False) -> tuple[np.ndarray, str]:
        """Examples (n, *input_shape) from an uploaded file: an image, or a JSON array (or object of columns).

        Returns the examples in the data's original units and a note on how the file was read.
        """
        if len(data) > self.limits.max_upload_bytes:
            raise RequestTooLarge(f"the upload has {len(data)} bytes; at most {self.limits.max_upload_bytes} are accepted")
        if not data.strip():
            raise DataError("the uploaded file is empty")
        if data.lstrip(b" \t\r\n\xef\xbb\xbf")[:1] in (b"[", b"{"):
            x, note = self._read_json(data), "read as a JSON array"
        elif self.is_image:
            x, note = self._read_image(data)
        else:
            raise UnsupportedInput(f"this model takes vectors of {self.n_features} values; upload a JSON array of "
                                   f"{self.n_features} numbers (or a JSON object with the columns "
                                   f"{', '.join(self.columns[:5])}{', ...' if len(self.columns) > 5 else ''})")
        if invert:
            if self.vae.config_.data.kind != "unit":
                raise DataError("invert applies to data with values in [0, 1] (images); this model's data are not")
            x = 1.0 - x
            note += ", colours inverted"
        return x, note

    def _read_json(self, data: bytes) -> np.ndarray:
        try:
            value = json.loads(data.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise UnsupportedInput("the file starts like JSON but is not UTF-8 text") from None
        except json.JSONDecodeError as err:
            raise DataError(f"the file is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
        except RecursionError:
            raise DataError("the JSON is nested too deeply to be an array of examples") from None
        if self.schema is not None:
            return self._table_rows(value)
        if isinstance(value, dict):
            value = self._row_from_object(value)
        elif b"true" in data or b"false" in data:  # numbers only: json turns true/false into 1/0 without a trace
            raise DataError("the array must hold numbers only; it holds true/false")
        return self.as_examples(value, "the uploaded array")

    def _table_rows(self, value: Any) -> np.ndarray:
        """A table run's rows from JSON: one object of named columns, a list of them, or lists of values in column
        order (null for an empty cell); returned as the encoded values the run's estimator takes."""
        import pandas as pd

        rows = value if isinstance(value, list) and value and isinstance(value[0], (dict, list)) else [value]
        if len(rows) > self.limits.max_latent_batch:
            raise DataError(f"the upload holds {len(rows)} rows; at most {self.limits.max_latent_batch} per request")
        records = []
        for row in rows:
            if isinstance(row, dict):
                self._check_named_columns(row)
                records.append([row[c] for c in self.columns])
            elif isinstance(row, list) and len(row) == len(self.columns):
                records.append(row)
            else:
                raise DataError(f"a row must be an object with the columns {', '.join(self.columns[:5])}"
                                f"{', ...' if len(self.columns) > 5 else ''} or a list of {len(self.columns)} values")
        return self.schema.encode(pd.DataFrame(records, columns=self.columns), where="the uploaded rows")

    def _check_named_columns(self, row: dict[str, Any]) -> None:
        """A JSON object must name exactly the model's columns."""
        missing = [c for c in self.columns if c not in row]
        unknown = [k for k in row if k not in self.columns]
        if missing or unknown:
            raise DataError("the object must name exactly the model's columns"
                            + (f"; missing: {', '.join(missing[:10])}" if missing else "")
                            + (f"; unknown: {', '.join(map(str, unknown[:10]))}" if unknown else ""))

    def _row_from_object(self, value: dict[str, Any]) -> list[Any]:
        if self.is_image:
            raise DataError("a JSON object is read as one row of named columns; this model takes images "
                            f"(upload an image or an array of shape {list(self.input_shape)})")
        self._check_named_columns(value)
        bad = [c for c in self.columns if isinstance(value[c], bool) or not isinstance(value[c], (int, float))]
        if bad:
            raise DataError(f"column {bad[0]!r} must be a number, got {value[bad[0]]!r}")
        return [value[c] for c in self.columns]

    def as_examples(self, value: Any, what: str = "the examples") -> np.ndarray:
        """Nested lists (or an array) as float32 examples (n, *input_shape), validated: shape, numbers, finite values."""
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):
            raise DataError(f"{what} is ragged: its rows have different lengths") from None
        if array.dtype.kind not in "iuf":
            what_kind = {"b": "true/false values", "U": "strings", "S": "strings"}.get(array.dtype.kind,
                                                                                       "non-numbers or numbers too large")
            raise DataError(f"{what} must hold numbers only; it holds {what_kind}")
        if not np.isfinite(array).all():
            raise DataError(f"{what} holds NaN or infinite values at {_first_position(~np.isfinite(array))}")
        if array.size and np.abs(array).max() > FLOAT32_MAX:
            raise DataError(f"{what} holds values beyond the range of 32-bit floats")
        shape, features = self.input_shape, self.n_features
        one_image = self.is_image and shape[0] == 1 and array.shape == shape[1:]
        if array.shape == shape or (array.ndim == 1 and array.size == features) or one_image:
            array = array.reshape(1, *shape)
        elif array.ndim >= 2 and (array.shape[1:] == shape or (array.ndim == 2 and array.shape[1] == features)
                                  or (self.is_image and shape[0] == 1 and array.shape[1:] == shape[1:])):
            array = array.reshape(len(array), *shape)
        else:
            raise DataError(f"{what} has shape {array.shape}; one example has shape {shape} ({features} values) "
                            "and several stack along a first axis")
        if len(array) == 0:
            raise DataError(f"{what} holds no examples")
        if len(array) > self.limits.max_latent_batch:
            raise DataError(f"{what} holds {len(array)} examples; at most {self.limits.max_latent_batch} per request")
        return array.astype(np.float32)

    def _read_image(self, data: bytes) -> tuple[np.ndarray, str]:
        from PIL import Image, ImageOps, UnidentifiedImageError

        Image.init()  # formats this Pillow cannot open (WebP without libwebp) are left out, not a KeyError
        formats = [name for name in UPLOAD_IMAGE_FORMATS if name in Image.OPEN]
        try:
            img = Image.open(io.BytesIO(data), formats=formats)
        except UnidentifiedImageError:
            raise UnsupportedInput(f"the file is neither an image ({', '.join(UPLOAD_IMAGE_FORMATS)}) "
                                   "nor a JSON array") from None
        except Image.DecompressionBombError:
            raise RequestTooLarge(f"the image is larger than {self.limits.max_image_pixels} pixels") from None
        except (OSError, ValueError, SyntaxError) as err:
            raise DataError(f"the image cannot be read: {err}") from None
        width, height = img.size
        if width * height > self.limits.max_image_pixels:
            raise RequestTooLarge(f"the image is {width}x{height} = {width * height} pixels; "
                                  f"at most {self.limits.max_image_pixels} are accepted")
        image_format = img.format or "image"
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
            x = self._image_to_example(img)
        except Image.DecompressionBombError:
            raise RequestTooLarge(f"the image is larger than {self.limits.max_image_pixels} pixels") from None
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise DataError(f"the image cannot be decoded (truncated or corrupt?): {err}") from None
        channels, h, w = self.input_shape
        note = f"read a {image_format} of {width}x{height} ({img.mode})"
        if (height, width) != (h, w):
            note += f", resized to {w}x{h}"
        return x, note + (", grayscale" if channels == 1 else ", RGB")

    def _image_to_example(self, img) -> np.ndarray:
        from PIL import Image

        channels, height, width = self.input_shape
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I") and arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
        if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")  # transparent pixels become the black background of most image data sets
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return (arr[None] if channels == 1 else arr.transpose(2, 0, 1))[None]

    # --- encoding, reconstruction, scores ----------------------------------------------------------
    # A conditional model's upload methods take ``y``: the class index (``label``) of every example, or None.
    def encode(self, x: np.ndarray, y: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.vae.encode(x, y)

    def reconstruct(self, x: np.ndarray, y: int | None = None) -> np.ndarray:
        return self.vae.reconstruct(x, y)

    def _scores(self, x: np.ndarray, y: Any = None) -> dict[str, np.ndarray]:
        s = self.score_settings
        return anomaly_scores(self.vae, x, None, num_importance_samples=s["num_importance_samples"],
                              compressor=s["compressor"], seed=s["seed"], typicality=self.typicality, labels=y)

    def score(self, x: np.ndarray, y: int | None = None) -> dict[str, Any]:
        """Every anomaly score that applies, the explorer's score, its percentile among the reference data,
        and the detector's verdict when the run has a detector."""
        scores = self._scores(x, y)
        values = scores[self.score_name]
        result: dict[str, Any] = {"score": self.score_name, "values": values.tolist(),
                                  "scores": {name: v.tolist() for name, v in scores.items()},
                                  "percentiles": None, "threshold": None, "is_anomaly": None}
        if self.reference_scores is not None:
            ranks = np.searchsorted(self.reference_scores, values, side="right")
            result["percentiles"] = (100.0 * ranks / len(self.reference_scores)).tolist()
        if self.detector is not None:
            result["threshold"] = float(self.detector.threshold_)
            result["is_anomaly"] = (values > self.detector.threshold_).tolist()
        return result

    def analyze(self, x: np.ndarray, y: int | None = None) -> dict[str, Any]:
        """One example: as the model sees it, its reconstruction, its posterior and its anomaly score."""
        if len(x) != 1:
            raise DataError(f"analyze takes one example, the upload holds {len(x)}; use encode, reconstruct or score")
        mean, variance = self.encode(x, y)
        score = self.score(x, y)
        return {"input": self.outputs(x), "reconstruction": self.outputs(self.reconstruct(x, y)),
                "mean": mean[0].tolist(), "variance": variance[0].tolist(), "explanation": self.explanation(x, y),
                "anomaly": {"score": score["score"], "value": score["values"][0], "scores": {k: v[0] for k, v in score["scores"].items()},
                            "percentile": None if score["percentiles"] is None else score["percentiles"][0],
                            "threshold": score["threshold"],
                            "is_anomaly": None if score["is_anomaly"] is None else score["is_anomaly"][0]}}

    def explanation(self, x: np.ndarray, y: int | None = None) -> dict[str, Any]:
        """Each value's share of -log p(x|z) in nats (``anomaly.explain``): a heat-map PNG for an image (viridis,
        0 to the largest share), the shares with their column names for a table."""
        contributions = feature_contributions(self.vae, x, seed=0, labels=y)[0]
        total = float(contributions.sum())
        if not self.is_image:
            return {"kind": "vector", "columns": self.columns, "contributions": contributions.reshape(-1).tolist(),
                    "total_nats": total, "image": None, "max_nats": None}
        from matplotlib import colormaps

        heat = contributions.sum(axis=0)  # over channels
        top = float(heat.max())
        scaled = np.clip(heat / top, 0.0, 1.0) if top > 0 else np.zeros_like(heat)
        rgb = colormaps["viridis"](scaled)[..., :3].transpose(2, 0, 1)
        return {"kind": "image", "image": png_base64(rgb.astype(np.float32)), "max_nats": top, "total_nats": total,
                "columns": None, "contributions": None}

    @staticmethod
    def _check_count(value: int, limit: int, what: str, minimum: int = 1) -> None:
        if value < minimum:
            raise DataError(f"the number of {what} must be at least {minimum}, got {value}")
        if value > limit:
            raise DataError(f"{value} {what} asked for; the service gives at most {limit} per request")


def png_base64_grid(images: np.ndarray, ncols: int) -> str:
    """Images tiled edge to edge at their own size, as a base64-encoded PNG (the latent map)."""
    return base64.b64encode(png_bytes(images, ncols=ncols, padding=0, scale=1)).decode("ascii")


def _is_missing(value: Any) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _first_position(mask: np.ndarray) -> str:
    """Where the first true value of ``mask`` sits, as ``[i][j]``, and how many there are."""
    first = np.argwhere(mask)[0]
    count = int(mask.sum())
    return "".join(f"[{int(i)}]" for i in first) + (f" ({count} values)" if count > 1 else "")
