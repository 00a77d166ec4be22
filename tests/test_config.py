"""Typed configuration: defaults, YAML + --set loading, validation, round trip and hash."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ray_wsis
from ray_wsis.config import (
    Config,
    ConfigError,
    RayConfig,
    StorageConfig,
    absolute_paths,
    config_from_dict,
    load_config,
)


def test_defaults_are_the_reference_hyper_parameters():
    c = Config()
    # irn run_sample.py / step/train_cam.py / step/make_cam.py
    assert c.cam.learning_rate == 0.1 and c.cam.batch_size == 16 and c.cam.epochs == 5
    assert c.cam.weight_decay == 1e-4 and c.cam.crop_size == 512 and c.cam.resize_long == (320, 640)
    assert c.cam.scales == (1.0, 0.5, 1.5, 2.0)
    assert c.cam.eval_threshold == 0.15
    assert c.cam.frozen_stages == ("conv1", "layer1", "layer2")
    # step/cam_to_ir_label.py and misc/imutils.crf_inference_label
    ir = c.ir_label
    assert (ir.fg_threshold, ir.bg_threshold, ir.threshold_mode) == (0.30, 0.05, "fixed")
    assert ir.crf and ir.crf_iterations == 10 and ir.crf_gt_prob == 0.7
    assert (ir.crf_gaussian_sxy, ir.crf_gaussian_compat) == (3, 3)
    assert (ir.crf_bilateral_sxy, ir.crf_bilateral_srgb, ir.crf_bilateral_compat) == (50, 5, 10)
    # step/train_irn.py
    irn = c.irn
    assert (irn.crop_size, irn.batch_size, irn.epochs, irn.radius) == (512, 32, 3, 10)
    assert irn.learning_rate == 0.1 and irn.weight_decay == 1e-4 and irn.rescale == (0.5, 1.5)
    assert irn.train_backbone is False
    # make_sem_seg_labels.py / make_ins_seg_labels.py
    walk = c.walk
    assert (walk.beta, walk.exp_times, walk.radius) == (10, 8, 5)
    assert walk.sem_bg_threshold == 0.25 and walk.ins_bg_threshold == 0.25
    assert walk.centroid_iterations == 300 and walk.cluster_threshold == 2.5
    assert walk.min_fragment_fraction == 0.01 and walk.flip is True
    # psa train_aff.py / infer_aff.py
    aff = c.affinity
    assert (aff.beta, aff.batch_size, aff.epochs, aff.crop_size, aff.radius) == (8, 8, 8, 448, 5)
    assert (aff.learning_rate, aff.weight_decay, aff.exp_times, aff.bg_alpha) == (0.1, 5e-4, 8, 16)
    # new layers train at 10x the lr: the CAM classifier head and the IRN displacement branch
    assert c.cam.head_lr_scale == 10.0 and c.irn.dp_lr_scale == 10.0
    # irn's SGD momentum slot receives weight_decay: effectively plain SGD
    assert c.cam.momentum == 0.0 and c.irn.momentum == 0.0
    assert c.model.backbone == "resnet50" and c.method == "irnet"


def test_load_config_defaults_without_file():
    assert load_config() == absolute_paths(Config())


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "cam:\n  epochs: 7\n  scales: [1.0, 0.5]\nwalk:\n  beta: 9\nmodel:\n  backbone: resnet18\n"
        "output: s3://bucket/run\n"
    )
    config = load_config(
        str(path),
        ["cam.epochs=3", "irn.rescale=[0.75, 1.25]", "ir_label.crf=false", "model.weights=", "dataset.root=/data/voc"],
    )
    assert config.cam.epochs == 3  # --set beats the file
    assert config.cam.scales == (1.0, 0.5)  # lists become tuples
    assert config.walk.beta == 9.0 and isinstance(config.walk.beta, float)  # ints widen to float
    assert config.model.backbone == "resnet18"
    assert config.irn.rescale == (0.75, 1.25)
    assert config.ir_label.crf is False
    assert config.model.weights == ""
    assert config.dataset.root == "/data/voc"
    assert config.output == "s3://bucket/run"
    assert config.cam.batch_size == 16  # untouched defaults remain


def test_packaged_demo_config_loads():
    path = Path(ray_wsis.__file__).parent / "configs" / "demo.yaml"
    config = load_config(str(path))
    assert config.model.backbone == "resnet18" and config.cam.crop_size == 96 and config.cam.optimizer == "adamw"
    assert config.cam.frozen_stages == () and config.irn.train_backbone is True


@pytest.mark.parametrize(
    "override, field",
    [
        ("cam.epoch=3", "cam.epoch"),
        ("walk.betaa=1", "walk.betaa"),
        ("nonsense=1", "nonsense"),
        ("ir_label.crf_sxy=3", "ir_label.crf_sxy"),
    ],
)
def test_unknown_key_names_the_dotted_key(override, field):
    with pytest.raises(ConfigError, match=f"unknown config key {field}"):
        load_config(None, [override])


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("irn:\n  radious: 5\n")
    with pytest.raises(ConfigError, match="irn.radious") as info:
        load_config(str(path))
    assert "irn.radius" in str(info.value)  # the suggestion


@pytest.mark.parametrize(
    "override, field",
    [
        ("cam.epochs=abc", "cam.epochs"),
        ("cam.epochs=2.5", "cam.epochs"),
        ("cam.epochs=true", "cam.epochs"),
        ("walk.beta=high", "walk.beta"),
        ("ir_label.crf=maybe", "ir_label.crf"),
        ("cam.scales=1.0", "cam.scales"),
        ("cam.scales=[1.0, x]", r"cam.scales\[1\]"),
        ("irn.rescale=[0.5]", "irn.rescale"),
        ("model.backbone=resnet152", "model.backbone"),
        ("method=deeplab", "method"),
        ("cam=3", "cam"),
        ("dataset.root=[1, 2]", "dataset.root"),
    ],
)
def test_wrong_types_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, field",
    [
        ("cam.batch_size=-1", "cam.batch_size"),
        ("cam.crop_size=0", "cam.crop_size"),
        ("irn.crop_size=-512", "irn.crop_size"),
        ("irn.radius=0", "irn.radius"),
        ("walk.centroid_iterations=0", "walk.centroid_iterations"),
        ("affinity.beta=-8", "affinity.beta"),
        ("cam.weight_decay=-0.1", "cam.weight_decay"),
        ("walk.exp_times=-1", "walk.exp_times"),
        ("seed=-3", "seed"),
        ("ray.num_workers=0", "ray.num_workers"),
    ],
)
def test_negative_or_zero_sizes(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, field",
    [
        ("ir_label.fg_threshold=1.5", "ir_label.fg_threshold"),
        ("ir_label.bg_threshold=-0.1", "ir_label.bg_threshold"),
        ("walk.sem_bg_threshold=2", "walk.sem_bg_threshold"),
        ("walk.ins_bg_threshold=-0.5", "walk.ins_bg_threshold"),
        ("cam.eval_threshold=1.01", "cam.eval_threshold"),
        ("ir_label.fg_quantile=1.2", "ir_label.fg_quantile"),
        ("walk.min_fragment_fraction=3", "walk.min_fragment_fraction"),
        ("cam.momentum=1.5", "cam.momentum"),
    ],
)
def test_thresholds_outside_unit_interval(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, [override])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="ir_label.bg_threshold"):
        load_config(None, ["ir_label.bg_threshold=0.5"])  # above fg 0.30
    with pytest.raises(ConfigError, match="cam.resize_long"):
        load_config(None, ["cam.resize_long=[640, 320]"])
    with pytest.raises(ConfigError, match="multiples of 16"):
        load_config(None, ["cam.crop_size=500"])
    with pytest.raises(ConfigError, match="cam.scales"):
        load_config(None, ["cam.scales=[]"])
    with pytest.raises(ConfigError, match="cam.frozen_stages"):
        load_config(None, ["cam.frozen_stages=[layer9]"])
    with pytest.raises(ConfigError, match="output"):
        load_config(None, ["output="])
    # boundary values are fine
    config = load_config(None, ["ir_label.fg_threshold=1", "ir_label.bg_threshold=0", "walk.exp_times=0"])
    assert config.ir_label.fg_threshold == 1.0 and config.walk.exp_times == 0


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("cam: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    twice = tmp_path / "twice.yaml"  # PyYAML alone keeps the second `cam:` and drops the first silently
    twice.write_text("cam:\n  epochs: 3\nirn:\n  epochs: 2\ncam:\n  crop_size: 64\n")
    with pytest.raises(ConfigError, match=r"key 'cam' appears twice \(first on line 1\) \(line 5\)") as raised:
        load_config(str(twice))
    assert "\n" not in str(raised.value)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(listed))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(str(empty)) == absolute_paths(Config())
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(None, ["cam.epochs"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["output=x", "output.sub=1"])


def test_round_trip_through_a_plain_dict():
    config = load_config(
        None,
        [
            "cam.epochs=9",
            "cam.scales=[1.0, 2.0]",
            "model.backbone=resnet34",
            "ray.num_workers=4",
            "ir_label.threshold_mode=quantile",
        ],
    )
    plain = config.to_dict()
    assert plain["cam"]["scales"] == [1.0, 2.0]  # tuples become lists: JSON-friendly
    again = config_from_dict(json.loads(json.dumps(plain)))
    assert again == config
    assert again.hash() == config.hash()
    with pytest.raises(ConfigError, match="cam.epochs"):
        config_from_dict({**plain, "cam": {**plain["cam"], "epochs": -1}})


def test_hash_is_stable_and_ignores_ray_and_output():
    base = Config()
    h = base.hash()
    assert len(h) == 16 and int(h, 16) >= 0
    assert Config().hash() == h
    ignored = base.replace(
        ray=RayConfig(num_workers=8, use_gpu=True, address="ray://head:10001"),
        output="s3://elsewhere",
        run_name="other",
        storage=StorageConfig(endpoint_url="http://127.0.0.1:9000"),
    )
    assert ignored.hash() == h
    assert load_config(None, ["ray.inference_actors=3", "ray.rows_per_file=10"]).hash() == h
    for change in ("cam.epochs=6", "walk.beta=9", "model.backbone=resnet18", "ir_label.crf=false", "seed=1"):
        assert load_config(None, [change]).hash() != h, change


def test_hash_is_the_same_in_another_process():
    code = "from ray_wsis.config import Config; print(Config().hash())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert out.stdout.strip() == Config().hash()


def test_config_is_frozen():
    config = Config()
    with pytest.raises(Exception):
        config.cam.epochs = 1  # type: ignore[misc]


@pytest.mark.parametrize("field", ["walk.radius", "irn.radius", "affinity.radius"])
def test_radius_one_is_rejected_up_front(field):
    from ray_wsis.method.path_index import path_index

    with pytest.raises(ValueError):
        path_index(1)  # what the stage would do with it
    with pytest.raises(ConfigError, match=field):
        load_config(None, [f"{field}=1"])


def test_relative_local_paths_become_absolute(tmp_path, monkeypatch):
    """Ray workers run in their own working directories: a relative output must not move."""
    monkeypatch.chdir(tmp_path)
    config = load_config(
        None, ["output=./out", "dataset.root=data/voc", "model.weights=ResNet50_Weights.IMAGENET1K_V1"]
    )
    assert config.output == str(tmp_path / "out")
    assert config.dataset.root == str(tmp_path / "data" / "voc")
    assert config.model.weights == "ResNet50_Weights.IMAGENET1K_V1"  # an enum name, not a path
    assert load_config(None, ["output=s3://bucket/run"]).output == "s3://bucket/run"


def test_local_ray_keeps_a_cpu_for_decoding():
    """2 one-CPU actors on a 2-CPU local Ray used to hang make-cams (bench/scaling.py found it)."""
    from ray_wsis.pipeline.context import check_cpu_room

    config = load_config(None, ["ray.inference_actors=2", "ray.cpus_per_actor=1"])
    with pytest.raises(ConfigError, match="ray.inference_actors x ray.cpus_per_actor = 2 would hold all 2 CPUs"):
        check_cpu_room(config, 2)
    check_cpu_room(config, 3)


def test_local_ray_keeps_a_cpu_for_training_ingest():
    from ray_wsis.pipeline.context import check_cpu_room

    config = load_config(None, ["ray.num_workers=1", "ray.cpus_per_worker=2", "ray.inference_actors=1"])
    with pytest.raises(ConfigError, match="ray.num_workers x ray.cpus_per_worker = 2 would hold all 2 CPUs"):
        check_cpu_room(config, 2)
    check_cpu_room(config, 3)


def test_optimizer_choice_builds_that_optimizer():
    import torch

    from ray_wsis.train.optim import poly_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(poly_optimizer("sgd", [(params, 0.1)], 1e-4, 0.9), torch.optim.SGD)
    adamw = poly_optimizer("adamw", [(params, 1e-3)], 1e-4, 0.9)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["initial_lr"] == 1e-3
    with pytest.raises(ValueError, match="optimizer"):
        poly_optimizer("adam", [(params, 1e-3)], 1e-4, 0.9)


@pytest.mark.parametrize(
    "path", sorted((Path(ray_wsis.__file__).parent / "configs").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_builtin_config_loads(path):
    config = load_config(str(path), ["dataset.root=/data"])
    assert config.dataset.root == "/data"


def test_the_pretrained_demo_config_is_the_demo_with_irn_training():
    configs = Path(ray_wsis.__file__).parent / "configs"
    demo = load_config(str(configs / "demo.yaml"))
    pretrained = load_config(str(configs / "demo_pretrained.yaml"))
    assert (pretrained.model.backbone, pretrained.model.weights) == (
        "efficientnet_lite0",
        "efficientnet_lite0.imagenet",
    )
    assert (pretrained.cam.optimizer, pretrained.cam.learning_rate, pretrained.cam.head_lr_scale) == ("sgd", 0.1, 10.0)
    assert (pretrained.irn.backbone_init, pretrained.irn.train_backbone) == ("weights", False)
    assert pretrained.dataset == demo.dataset and pretrained.walk == demo.walk
    assert pretrained.calibration == demo.calibration and pretrained.cam.crop_size == demo.cam.crop_size
