"""``edgefleet models`` and ``deploy``: the catalog, pushes and rollbacks."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from fleet_server.admin_cli import common, optimize
from fleet_server.errors import BadRequestError, FleetError
from protos import admin_pb2 as pb

__all__ = ["add_parsers"]

_CHUNK = 256 * 1024


def _sample_bytes(sample: Path, model: Path) -> bytes:
    """The smoke-test input: an image (prepared like `edgefleet-agent predict` does), a .npy
    array for a one-input model, or raw bytes (.bin) of every input in order."""
    import numpy as np  # noqa: PLC0415

    from agent.errors import AgentError  # noqa: PLC0415
    from agent.inference.modelfile import inspect_model_file  # noqa: PLC0415

    try:
        if sample.suffix == ".bin":
            return sample.read_bytes()
        if sample.suffix == ".npy":
            array = np.load(sample, allow_pickle=False)
            return bytes(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).data)
        from agent.inference.preprocess import (  # noqa: PLC0415
            image_to_tensor,
            load_image,
            model_normalization,
        )

        tensor = inspect_model_file(model).inputs[0]
        normalization = model_normalization(model, tensor)
        return image_to_tensor(load_image(sample), tensor, normalization).tobytes()
    except (OSError, ValueError) as exc:
        raise BadRequestError(f"cannot read sample {sample}: {exc}") from exc
    except AgentError as exc:
        raise BadRequestError(f"sample {sample}: {exc}") from exc
    except ImportError as exc:
        raise BadRequestError("an image sample needs Pillow: pip install pillow") from exc


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise BadRequestError(f"cannot read {path}: {exc.strerror}") from exc


class _Progress:
    """Upload progress on stderr, when it is a terminal (never in scripts' captured output)."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.sent = 0
        self._shown = -1
        self._tty = sys.stderr.isatty()

    def add(self, count: int) -> None:
        self.sent += count
        percent = self.sent * 100 // self.total
        if self._tty and percent != self._shown:
            self._shown = percent
            bar = "#" * (percent // 4)
            end = "\n" if self.sent >= self.total else ""
            print(
                f"\ruploading [{bar:<25}] {percent:3d}% of {self.total / 1e6:.1f} MB",
                end=end,
                file=sys.stderr,
                flush=True,
            )


def _send_file(
    path: Path, part: str, progress: _Progress | None = None
) -> Iterator[pb.PushModelRequest]:
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            message = pb.PushModelRequest()
            setattr(message, part, block)
            if progress is not None:
                progress.add(len(block))
            yield message


def _from_build(
    folder: Path,
) -> tuple[list[Path], list[str], list[pb.Evidence | None], float | None]:
    """The accepted variants of an `edgefleet model build` directory, with their evidence, and
    the build's accuracy floor.

    Raises:
        BadRequestError: no report there, or no variant passed.
    """
    from fleet_server.optimize.build import REPORT, BuildReport  # noqa: PLC0415

    try:
        report = BuildReport.from_json((folder / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BadRequestError(
            f"{folder} is a directory without a readable {REPORT}; push files, or a directory "
            f"made by 'edgefleet model build' ({exc})"
        ) from exc
    accepted = [v for v in report.variants if v.status == "ok" and v.file]
    if not accepted:
        raise BadRequestError(f"no variant in {folder} passed its checks (see report.txt)")
    skipped = [
        f"{v.name} ({v.status})"
        for v in report.variants
        if v not in accepted and v.status != "reference"
    ]
    if skipped:
        print(f"not pushed: {', '.join(skipped)}", file=sys.stderr)
    evidence: list[pb.Evidence | None] = []
    for v in accepted:
        e = pb.Evidence(source=f"model build on {report.host}, {report.samples_eval} samples")
        fields: dict[str, object] = {
            "accuracy": v.accuracy,
            "top1_agreement": v.top1_agreement,
            "technique": v.technique,
            "sparsity": v.sparsity,
        }
        key: str = "median_ms"
        value: object = v.median_ms
        try:  # a hand-edited report: a field of the wrong type
            if v.median_ms > 0:
                e.latency_ms[report.hardware_class] = v.median_ms
            for key, value in fields.items():
                if value is not None:
                    setattr(e, key, value)
        except (TypeError, ValueError) as exc:
            kind = "a string" if key == "technique" else "a number"
            raise BadRequestError(
                f"{folder / REPORT}: variant {v.name}: {key} {value!r} is not {kind}"
            ) from exc
        evidence.append(e)
    floor = report.min_accuracy
    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, int | float)):
        raise BadRequestError(f"{folder / REPORT}: min_accuracy {floor!r} is not a number")
    return (
        [folder / v.file for v in accepted],
        [v.name for v in accepted],
        evidence,
        floor,
    )


def _name_the_file(message: str, files: list[Path], names: list[str]) -> str:
    """The server names what it refused by variant ("the model" when unnamed): say which of the
    caller's files that is."""
    if len(files) == 1:
        return f"{files[0]}: {message}"
    for position, (path, name) in enumerate(zip(files, names, strict=True), start=1):
        label = (
            f"variant {name}"
            if name
            else "the model"
            if position == 1
            else (f"model file {position}")
        )
        if re.search(rf"(^|: )(rejected )?{re.escape(label)}:", message):
            return f"{path}: {message}"
    return message


def _cmd_push(args: argparse.Namespace) -> int:
    files: list[Path] = args.files
    names: list[str] = args.variant or []
    evidence: list[pb.Evidence | None] = [None] * len(files)
    if len(files) == 1 and files[0].is_dir():
        if names or args.fallback:
            raise BadRequestError("a build directory names its variants; drop --variant/--fallback")
        files, names, evidence, build_floor = _from_build(files[0])
        if args.accuracy_floor is None and build_floor is not None:
            args.accuracy_floor = build_floor * 100
    if len(names) > len(files):
        raise BadRequestError(f"{len(names)} --variant names for {len(files)} file(s)")
    names += [""] * (len(files) - len(names))  # the server names the rest by their kind
    sizes = [_size(path) for path in files]
    fallback: Path | None = args.fallback
    samples = [_sample_bytes(args.sample, path) if args.sample else b"" for path in files]
    meta = pb.PushModelMeta(
        model_name=args.name,
        version=args.version,
        variant=names[0],
        size=sizes[0],
        fallback_size=_size(fallback) if fallback else 0,
        sample=samples[0],
        smoke_tolerance=args.smoke_tolerance,
        sign_offline=args.sign_offline,
        no_compression=args.no_compress,
    )
    if args.accuracy_floor is not None:
        meta.accuracy_floor = args.accuracy_floor / 100
    if evidence[0] is not None:
        meta.evidence.CopyFrom(evidence[0])
    if args.sign_offline and args.deploy:
        raise BadRequestError("a version signed offline is deployed after 'manifest attach'")

    progress = _Progress(sum(sizes) + (meta.fallback_size or 0))

    def requests() -> Iterator[pb.PushModelRequest]:
        yield pb.PushModelRequest(meta=meta)
        yield from _send_file(files[0], "data", progress)
        if fallback is not None:
            yield from _send_file(fallback, "fallback_data", progress)
        more = zip(files[1:], names[1:], sizes[1:], samples[1:], evidence[1:], strict=True)
        for path, name, size, sample, measured in more:
            header = pb.VariantHeader(variant=name, size=size, sample=sample)
            if measured is not None:
                header.evidence.CopyFrom(measured)
            yield pb.PushModelRequest(variant=header)
            yield from _send_file(path, "data", progress)

    admin = common.admin(args)
    try:
        response = admin.call("PushModel", requests())
    except FleetError as exc:
        raise type(exc)(_name_the_file(str(exc), files, names)) from exc
    variants = list(response.variants) or [response.model]
    first = variants[0]
    print(
        f"pushed {first.model_name} {first.version}, release {first.release_counter}, "
        f"{len(variants)} variant(s)" + ("" if response.unsigned_manifests else ", signed")
    )
    for m in variants:
        profile = m.profile
        transport = profile.transport_size
        measured = "".join(f"  {k}: {v:.4f} ms" for k, v in sorted(profile.latency_ms.items())) + (
            f"  accuracy {profile.accuracy:.2%}" if profile.HasField("accuracy") else ""
        )
        print(
            f"  {m.variant:16} {m.quantization:13} {m.size:10d} bytes"
            + (f" ({transport} zstd)" if transport else "")
            + f"  sha256 {m.sha256[:16]}..."
            + measured
            + (f"  CPU fallback {m.fallback_sha256[:12]}..." if m.fallback_sha256 else "")
            + (f"  smoke top {list(m.smoke_top_indices)}" if m.smoke_top_indices else "")
        )
    for note in response.notes:
        print(f"note: {note}")
    unsigned = list(response.unsigned_manifests)
    for m, payload in zip(variants, unsigned, strict=False):  # unsigned is empty when signed
        out = args.manifest_out or Path(f"{args.name}-{args.version}.manifest")
        if len(unsigned) > 1:
            out = out.with_name(f"{out.stem}-{m.variant}{out.suffix}")
        out.write_bytes(payload)
        print(
            f"not signed: wrote {m.variant}'s manifest to {out}; sign it where the release key "
            f"is ('edgefleet manifest sign {out} --key KEY') and attach the result"
        )
    if args.deploy:
        deployed = admin.call(
            "Deploy", pb.DeployRequest(model_name=args.name, version=args.version)
        )
        print(f"deployed {args.name} {args.version} to the fleet")
        if deployed.note:
            print(f"note: {deployed.note}")
    return 0


def _print_swept(answer: pb.DeleteModelsResponse, *, dry_run: bool = False) -> None:
    verb = "would delete" if dry_run else "deleted"
    for version in answer.deleted:
        print(f"{verb:12} {version}")
    for version, why in sorted(answer.kept.items()):
        print(f"{'kept':12} {version}: {why}")
    if not dry_run:
        print(f"{answer.files} file(s) removed, {answer.freed_bytes / 2**20:.1f} MiB freed")


def _cmd_models_delete(args: argparse.Namespace) -> int:
    answer = common.admin(args).call(
        "DeleteModelVersion",
        pb.DeleteModelVersionRequest(model_name=args.name, version=args.version, force=args.force),
    )
    _print_swept(answer)
    return 0


def _cmd_models_prune(args: argparse.Namespace) -> int:
    answer = common.admin(args).call(
        "PruneModels",
        pb.PruneModelsRequest(model_name=args.name, keep=args.keep, dry_run=args.dry_run),
    )
    _print_swept(answer, dry_run=args.dry_run)
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    response = common.admin(args).call("ListModels", pb.ListModelsRequest())
    if args.json:
        print(
            json.dumps(
                [MessageToDict(m, preserving_proto_field_name=True) for m in response.models],
                indent=2,
            )
        )
        return 0
    if not response.models:
        print("no models; push one with: edgefleet models push FILE --name N --version V")
        return 0
    width = max([10, *(len(m.variant) for m in response.models)])
    print(
        f"{'MODEL':24} {'VERSION':10} {'VARIANT':{width}} {'KIND':12} {'TECHNIQUE':9} "
        f"{'RELEASE':>7} {'SIZE':>10}  DEPLOYED"
    )
    for m in response.models:
        print(
            f"{m.model_name:24} {m.version:10} {m.variant:{width}} {m.quantization:12} "
            f"{m.profile.technique or '-':9} {m.release_counter:7d} "
            f"{m.size:10d}  {'yes' if m.deployed else ''}"
        )
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from fleet_server.signing.keys import sign_envelope  # noqa: PLC0415
    from protos import manifest_pb2  # noqa: PLC0415
    from protos.envelope import MANIFEST_PAYLOAD_TYPE  # noqa: PLC0415

    admin = common.admin(args)
    # The server judges the request first (an unknown model or version is that error, not a
    # missing root key); preparing changes nothing.
    prepared = admin.call(
        "PrepareRollback", pb.DeployRequest(model_name=args.name, version=args.version)
    )
    keys = common.root_keys(args)
    first, *rest = [
        sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, keys)
        for payload in prepared.unsigned_manifests or [prepared.unsigned_manifest]
    ]
    admin.call("CommitRollback", pb.AttachSignaturesRequest(envelope=first, envelopes=rest))
    manifest = manifest_pb2.Manifest.FromString(prepared.unsigned_manifest)
    print(
        f"rolled {manifest.model_name} back to {manifest.version} (release "
        f"{manifest.release_counter}, signed by {len(keys)} root key(s)); devices install it "
        "at their next check-in"
    )
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    response = common.admin(args).call(
        "Deploy", pb.DeployRequest(model_name=args.name, version=args.version, force=args.force)
    )
    print(f"deployed {response.model.model_name} {response.model.version} to the fleet")
    if response.note:
        print(f"note: {response.note}")
    return 0


def add_parsers(sub: Any) -> None:
    """Add this area's commands to the top-level subparsers."""
    models = sub.add_parser("models", help="the model catalog")
    models_sub = models.add_subparsers(dest="action", required=True)
    push = models_sub.add_parser(
        "push",
        help="upload a model version in one or more variants; the server signs them",
        description="Upload one or more .tflite variants of one model version (float32, int8, "
        "Edge TPU...). The server inspects each, derives what it needs, and gives each device "
        "the variant that fits it best ('edgefleet devices explain' shows why). A directory "
        "made by 'edgefleet model build' pushes its accepted variants with their measured "
        "latency and accuracy, which selection then uses.",
    )
    push.add_argument(
        "files", type=Path, nargs="+", metavar="FILE", help=".tflite files, or one build directory"
    )
    optimize.add_bench_parsers(models_sub)
    push.add_argument("--name", required=True, help="model name")
    push.add_argument("--version", required=True, help="semantic version, e.g. 1.0.0")
    push.add_argument(
        "--variant",
        action="append",
        help="variant name per FILE, in order (default: by kind: int8, edgetpu, float32...)",
    )
    push.add_argument("--deploy", action="store_true", help="also deploy it to the whole fleet")
    push.add_argument(
        "--sample",
        type=Path,
        help="smoke-test input: an image, a .npy array, or raw .bin bytes (default: random "
        "input); devices must reproduce the server's answer before activating the model",
    )
    push.add_argument(
        "--smoke-tolerance",
        type=common.number(0, 1),
        default=0.0,
        help="allowed score difference (0.05)",
    )
    push.add_argument(
        "--sign-offline",
        action="store_true",
        help="do not sign on the server: write the manifest for 'edgefleet manifest sign'",
    )
    push.add_argument("--manifest-out", type=Path, help="where --sign-offline writes it")
    push.add_argument(
        "--no-compress",
        action="store_true",
        help="do not offer devices a zstd-compressed copy (offered when at least 15%% smaller)",
    )
    push.add_argument(
        "--accuracy-floor",
        type=common.number(0, 100),
        metavar="PERCENT",
        help="devices get no variant measured under this accuracy, and a pruned or distilled "
        "variant measured within it is preferred over one as fast (default: a build "
        "directory's --min-accuracy, else none)",
    )
    push.add_argument(
        "--fallback",
        type=Path,
        help="for an Edge TPU model (the first FILE): its CPU variant, served where the Edge "
        "TPU cannot be used (among several FILEs the best CPU variant is paired on its own)",
    )
    push.set_defaults(func=_cmd_push)
    mlist = models_sub.add_parser("list", help="list model versions")
    mlist.add_argument("--json", action="store_true")
    mlist.set_defaults(func=_cmd_models_list)
    delete = models_sub.add_parser(
        "delete",
        help="delete a version and its files",
        description="Refused while the version is deployed, in a rollout in effect, or (without "
        "--force) served by devices. Its version and release number are never reused.",
    )
    delete.add_argument("name")
    delete.add_argument("version")
    delete.add_argument(
        "--force", action="store_true", help="even while devices serve it (they keep running it)"
    )
    delete.set_defaults(func=_cmd_models_delete)
    prune = models_sub.add_parser(
        "prune",
        help="delete the versions of a model beyond its newest N",
        description="Keeps the --keep newest versions, and every older one something needs "
        "(deployed, in a rollout in effect, served by devices), saying why.",
    )
    prune.add_argument("name")
    prune.add_argument("--keep", type=common.whole(1, 10_000), required=True, metavar="N")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    prune.set_defaults(func=_cmd_models_prune)

    rollback = models_sub.add_parser(
        "rollback",
        help="explicitly roll the fleet back to an older version (signed by the root keys)",
        description="Devices refuse older releases (anti-rollback) unless the root keys sign an "
        "explicit rollback. Root keys come from --root-key files, a --root-key-dir folder "
        "(the DATA_DIR.root-keys folder init wrote, wherever it is now), or DATA_DIR/keys "
        "for a data dir made with 'init --keep-root-online'.",
    )
    rollback.add_argument("name")
    rollback.add_argument("version")
    common.add_root_key_options(rollback)
    rollback.set_defaults(func=_cmd_rollback)

    deploy = sub.add_parser("deploy", help="make a model version the fleet's desired version")
    deploy.add_argument("name")
    deploy.add_argument("version")
    deploy.add_argument(
        "--force",
        action="store_true",
        help="end a running or paused rollout of the model (without it the deploy is refused "
        "while one is under way)",
    )
    deploy.set_defaults(func=_cmd_deploy)
