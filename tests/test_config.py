"""Config schema, merging, overrides and their errors."""

import argparse
import glob
import os
import sys
import threading

import pytest
import torch

from lib.config import (
    KDTYPES,
    LOSS_WEIGHT_KEYS,
    REPO_ROOT,
    UNUSED_KEYS,
    cfg_value,
    config_parser,
    diff_cfg,
    get_cfg,
    load_config,
    merge_file,
    merge_list,
    parse_args,
    resolve_path,
    small_crop_size,
    small_resize_size,
)
from lib.utils.errors import UserError

ALL_CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True))

# Every key of the original release's schema, with its default (gyguo/PixelDistillation lib/config/default.py).
RELEASE_DEFAULTS = {
    "BASIC.GPU_ID": [0], "BASIC.NUM_WORKERS": 10, "BASIC.DISP_FREQ": 10, "BASIC.SEED": 0, "BASIC.SAVE_DIR": "",
    "BASIC.ROOT_DIR": "", "BASIC.BACKUP_CODES": True, "BASIC.BACKUP_LIST": ["lib", "tools"],
    "MODEL.TYPE": "", "MODEL.ARCH": "", "MODEL.PRETRAIN": False, "MODEL.KDTYPE": "kd", "MODEL.ARCH_T": "",
    "MODEL.MODELDICT_T": "", "MODEL.PRETRAIN_T": False, "MODEL.ARCH_A": "", "MODEL.MODELDICT_A": "",
    "MODEL.PRETRAIN_A": False, "MODEL.ARCH_S": "", "MODEL.MODELDICT_S": "", "MODEL.PRETRAIN_S": False,
    "MODEL.PRERELU": False, "KD.TEMP": 4, "KD.ALPHA": 0.9, "AT.BETA": 1000.0, "SP.BETA": 3000.0,
    "ICKD.BETA": 2.5, "ICKD.FEATDIM_T": [512], "ICKD.FEATDIM_S": [512], "DKD.ALPHA": 1.0, "DKD.BETA": 8.0,
    "DKD.TEMP": 4, "DKD.WARMUP": 20, "FSR.BETA": 0.0, "FSR.GAMMA": 0.0, "FSR.ETA": 0.0, "FSR.BETA1": 0.0,
    "FSR.BETA2": 0.0, "FSR.RESIDUAL": False, "FSR.POSITION": 0, "DATA.DATASET": "", "DATA.DATADIR": "",
    "DATA.NUM_CLASSES": 200, "DATA.RESIZE_SIZE": 256, "DATA.CROP_SIZE": 224, "DATA.LESSEN_RATIO": 1.0,
    "DATA.LESSEN_TYPE": 2, "DATA.IMAGE_MEAN": [0.485, 0.456, 0.406], "DATA.IMAGE_STD": [0.229, 0.224, 0.225],
    "SOLVER.START_LR": 0.1, "SOLVER.LR_STEPS": [60, 120, 160], "SOLVER.LR_DECAY_FACTOR": 0.1,
    "SOLVER.NUM_EPOCHS": 140, "SOLVER.WEIGHT_DECAY": 5e-4, "SOLVER.MUMENTUM": 0.9, "TRAIN.BATCH_SIZE": 32,
    "TEST.BATCH_SIZE": 32, "CUDNN.BENCHMARK": False, "CUDNN.DETERMINISTIC": True, "CUDNN.ENABLE": True,
}


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def test_the_small_sizes_are_truncated_as_the_original_computes_them():
    cfg = get_cfg()
    cfg.DATA.CROP_SIZE, cfg.DATA.RESIZE_SIZE, cfg.DATA.LESSEN_RATIO = 224, 256, 3.0
    assert (small_crop_size(cfg), small_resize_size(cfg)) == (74, 85)  # 74.67 and 85.33, not rounded
    cfg.DATA.LESSEN_RATIO = 4.0
    assert (small_crop_size(cfg), small_resize_size(cfg)) == (56, 64)


def test_schema_holds_every_release_key_with_its_default():
    cfg = get_cfg()
    for key, value in RELEASE_DEFAULTS.items():
        assert _get(cfg, key) == value, key


def test_the_keys_marked_unused_are_unused_keys_and_nothing_reads_them():
    # UNUSED_KEYS lets a resume ignore them; a key that gains a reader must leave both the comment and the tuple.
    import re

    text = open(os.path.join(REPO_ROOT, "lib", "config", "defaults.py")).read()
    marked = re.findall(r"^# Unused\b.*\n(?:#.*\n)*_C\.(\w+\.\w+) =", text, flags=re.MULTILINE)
    assert sorted(marked) == sorted(UNUSED_KEYS)
    sources = [os.path.join(folder, name) for top in ("lib", "tools", "tools_0_base", "tools_1_ts", "tools_2_tas")
               for folder, _, names in os.walk(os.path.join(REPO_ROOT, top)) for name in names if name.endswith(".py")]
    code = "".join(open(path).read() for path in sources if not path.endswith("defaults.py"))
    for key in UNUSED_KEYS:
        assert not re.search(r"\." + re.escape(key) + r"\b", code), f"{key} is read"


def test_get_cfg_returns_a_fresh_unfrozen_copy():
    a, b = get_cfg(), get_cfg()
    a.SOLVER.START_LR = 123.0
    assert b.SOLVER.START_LR == 0.1 and not a.is_frozen()


def test_overrides_parse_python_literals_and_accept_ints_for_floats():
    cfg = get_cfg()
    merge_list(cfg, ["FSR.ETA", "50", "MODEL.ARCH_T", "'resnet50'", "MODEL.ARCH_S", "resnet18",
                     "BASIC.GPU_ID", "[0, 1]", "DATA.LESSEN_RATIO", "4.0", "SOLVER.LR_STEPS", "[30, 60]"])
    assert cfg.FSR.ETA == 50.0 and isinstance(cfg.FSR.ETA, float)
    assert cfg.MODEL.ARCH_T == "resnet50" and cfg.MODEL.ARCH_S == "resnet18"
    assert cfg.BASIC.GPU_ID == [0, 1] and cfg.DATA.LESSEN_RATIO == 4.0 and cfg.SOLVER.LR_STEPS == [30, 60]


@pytest.mark.parametrize("opts, words", [
    (["SOLVER.MOMENTUM", "0.9"], ["SOLVER.MOMENTUM", "SOLVER.MUMENTUM"]),
    (["NOSECTION.KEY", "1"], ["NOSECTION.KEY"]),
    (["SOLVER.NUM_EPOCHS", "abc"], ["SOLVER.NUM_EPOCHS", "int"]),
    (["MODEL.PRETRAIN", "1"], ["MODEL.PRETRAIN", "bool"]),
    (["BASIC.GPU_ID", "[0"], ["BASIC.GPU_ID", "list"]),
    (["SOLVER.START_LR"], ["KEY VALUE"]),
    (["SOLVER.NUM_EPOCHS", "True"], ["SOLVER.NUM_EPOCHS", "expects an int, got True (a bool)"]),
    (["BASIC.OUTPUT_ROOT", "2024"], ["BASIC.OUTPUT_ROOT", "expects a string, got 2024 (an int); quote it to keep it "
                                     "a string: BASIC.OUTPUT_ROOT \"'2024'\" on the command line, '2024' in a YAML "
                                     "file"]),
    (["MODEL.ARCH", "BASIC.NUM_RUNS"], ["MODEL.ARCH", "has no value", "BASIC.NUM_RUNS"]),  # the last pair too
    (["SOLVR.X", "BASIC.SEED", "1"], ["unknown config key SOLVR.X"]),
    # A path with a space, unquoted: the word after it was named an unknown key, or the last word left without a value.
    (["DATA.DATADIR", "/tmp/my", "data/cub", "SOLVER.NUM_EPOCHS", "1"],
     ['the shell split the value of DATA.DATADIR at its spaces: /tmp/my data/cub came as 2 words; put it in quotes, '
      'DATA.DATADIR "/tmp/my data/cub"']),
    (["TEST.CHECKPOINT", "/tmp/my", "models/model_best.pth"],
     ['the shell split the value of TEST.CHECKPOINT at its spaces: /tmp/my models/model_best.pth came as 2 words']),
    (["MODEL.ARCH", "resnet18", "SOLVR.X", "1"], ["unknown config key SOLVR.X"]),  # a key misspelt, not a split value
    # Words of their own, not a value split: a glob's files, a checkpoint without its key, a number too many.
    (["TEST.CHECKPOINT", f"{REPO_ROOT}/README.md", f"{REPO_ROOT}/setup.py"], ["has no value"]),
    (["BASIC.OUTPUT_ROOT", "out", "run0/model_best.pth"], ["'run0/model_best.pth' has no value", "TEST.CHECKPOINT"]),
    (["MODEL.ARCH_S", "resnet18", "0.5"], ["'0.5' has no value"]),
    (["MODEL.ARCH", "resnet18", "solver.num_epochs", "1"], ["unknown config key solver.num_epochs",
                                                            "SOLVER.NUM_EPOCHS"]),
    # tools/eval.py's checkpoint given on its own, without TEST.CHECKPOINT.
    (["BASIC.NUM_WORKERS", "0", "ckpt/x/run0/model_best.pth"],
     ["'ckpt/x/run0/model_best.pth' has no value", "; a checkpoint is given to a config key: TEST.CHECKPOINT "
      "ckpt/x/run0/model_best.pth (tools/eval.py), MODEL.MODELDICT_T ckpt/x/run0/model_best.pth (a teacher)"]),
    # KEY=VALUE, as other tools take it: odd and even word counts alike.
    (["SOLVER.NUM_EPOCHS=1"], ["write overrides as KEY VALUE with a space, SOLVER.NUM_EPOCHS 1, not "
                               "SOLVER.NUM_EPOCHS=1"]),
    (["BASIC.SEED", "1", "solver.num_epochs=1", "BASIC.NUM_RUNS=2"], ["solver.num_epochs 1, not solver.num_epochs=1"]),
])
def test_bad_overrides_name_the_key(opts, words):
    with pytest.raises(UserError) as err:
        merge_list(get_cfg(), opts)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_a_mistyped_config_file_name_is_answered_with_the_files_like_it(tmp_path, monkeypatch):
    with pytest.raises(UserError) as err:
        merge_file(get_cfg(), "configs/demo/cub_demo_isrd.yam")
    assert str(err.value) == ("config file not found: configs/demo/cub_demo_isrd.yam; did you mean "
                              "configs/demo/cub_demo_isrd.yaml?")
    monkeypatch.chdir(tmp_path)  # a bare name: the current folder's files
    (tmp_path / "teacher.yaml").write_text("BASIC:\n  SEED: 1\n")
    with pytest.raises(UserError, match="not found: techer.yaml; did you mean teacher.yaml\\?$"):
        merge_file(get_cfg(), "techer.yaml")
    with pytest.raises(UserError, match="not found: teacher; did you mean teacher.yaml\\?$"):  # no extension
        merge_file(get_cfg(), "teacher")
    with pytest.raises(UserError, match="not found: other.yaml$"):  # nothing like it: nothing said
        merge_file(get_cfg(), "other.yaml")
    # A link to nothing: named so, not "not found; did you mean <itself>?".
    (tmp_path / "broken.yaml").symlink_to(tmp_path / "moved" / "broken.yaml")
    with pytest.raises(UserError) as err:
        merge_file(get_cfg(), "broken.yaml")
    assert str(err.value) == (f"config file broken.yaml is a link to {tmp_path}/moved/broken.yaml, which does not "
                              "exist (moved, or on a disk that is not mounted?); mend the link or give the file itself")
    # From another folder, a relative path is looked for from the repository root too.
    with pytest.raises(UserError, match="not found: configs/demo/cub_demo_teacher; did you mean "
                                        "configs/demo/cub_demo_teacher.yaml\\?$"):
        merge_file(get_cfg(), "configs/demo/cub_demo_teacher")


def test_missing_and_malformed_config_files_name_the_file(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*nope.yaml"):
        merge_file(get_cfg(), str(tmp_path / "nope.yaml"))
    with pytest.raises(UserError, match=f"config file is a folder, not a file: {tmp_path}$"):
        merge_file(get_cfg(), str(tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_text("SOLVER:\n  START_LR: [0.1\n")
    with pytest.raises(UserError, match="bad.yaml is not valid YAML"):
        merge_file(get_cfg(), str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("SOLVER:\n  START_LRR: 0.1\n")
    with pytest.raises(UserError, match="unknown config key SOLVER.START_LRR in .*did you mean SOLVER.START_LR"):
        merge_file(get_cfg(), str(unknown))


def _merge_error(tmp_path, text: str) -> tuple:
    """Write `text` as bad.yaml, merge it, expect a UserError; returns the file's path and the error's message."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(UserError) as err:
        merge_file(get_cfg(), str(bad))
    return bad, str(err.value)


@pytest.mark.parametrize("text, where", [
    ("SOLVER:\n\tSTART_LR: 0.1\n", "at line 2, column 1: found character '\\t' that cannot start any token"),
    ("SOLVER:\n  START_LR: [0.1\n", "at line 3, column 1: expected ',' or ']', but got '<stream end>'"),
    ("SOLVER:\n  START_LR: 0.1\x07\n", "at line 2, column 16: special characters are not allowed"),
])
def test_yaml_syntax_errors_say_what_was_found_and_where(text, where, tmp_path):
    bad, message = _merge_error(tmp_path, text)
    assert message.startswith(f"config file {bad} is not valid YAML {where}"), message
    assert "\n" not in message


@pytest.mark.parametrize("text, message", [
    # PyYAML silently keeps the last of two SOLVER blocks, dropping the first block's keys.
    ("SOLVER:\n  START_LR: 0.05\nDATA:\n  NUM_CLASSES: 4\nSOLVER:\n  NUM_EPOCHS: 1\n",
     "sets SOLVER twice (lines 1 and 5); YAML would keep only the second, dropping the first's keys: merge them"),
    ("SOLVER:\n  NUM_EPOCHS: 1\n  NUM_EPOCHS: 2\n",
     "sets NUM_EPOCHS twice (lines 2 and 3); YAML would keep only the second, dropping the first: keep one"),
    ("# every line a comment\n", "config file {path} holds no settings (it is empty or all comments)"),
    ("", "config file {path} holds no settings (it is empty or all comments)"),
    ("SOLVER: 5\n", "config key SOLVER in {path} is a section, not a value; write its keys indented below it"),
])
def test_a_key_given_twice_or_a_section_given_a_value_in_a_file_is_refused(text, message, tmp_path):
    bad, error = _merge_error(tmp_path, text)
    assert message.format(path=bad) in error and "\n" not in error, error


def test_a_section_with_every_key_commented_out_and_yaml_merge_keys_load(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("SOLVER:\n  # NUM_EPOCHS: 3\nKD: &kd\n  TEMP: 2\nDKD:\n  <<: *kd\n  TEMP: 3\n")
    cfg = get_cfg()
    merge_file(cfg, str(config))
    assert (cfg.SOLVER.NUM_EPOCHS, cfg.KD.TEMP, cfg.DKD.TEMP) == (get_cfg().SOLVER.NUM_EPOCHS, 2.0, 3.0)


def test_a_config_given_through_a_pipe_is_read(tmp_path):
    pipe = tmp_path / "fifo"  # what the shell passes for --config_file <(sed ... config.yaml)
    os.mkfifo(pipe)
    # A daemon writer: were the pipe refused unread, its open() would block for ever, and pytest with it.
    writer = threading.Thread(target=lambda: pipe.write_text("SOLVER:\n  NUM_EPOCHS: 3\n"), daemon=True)
    writer.start()
    cfg = get_cfg()
    merge_file(cfg, str(pipe))
    writer.join(timeout=10)
    assert not writer.is_alive() and cfg.SOLVER.NUM_EPOCHS == 3


def test_a_config_file_that_is_not_utf8_is_a_user_error(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("SOLVER:\n  START_LR: 0.1  # r\u00e9glage\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9 on line 2\); save it as UTF-8"):
        merge_file(get_cfg(), str(latin1))


def test_a_checkpoint_given_as_the_config_file_is_named_as_one(tmp_path):
    # tools/eval.py --config_file .../model_best.pth TEST.CHECKPOINT .../config.yaml: the two swapped.
    import torch

    checkpoint = tmp_path / "model_best.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, checkpoint)
    with pytest.raises(UserError, match=r"model_best.pth is a torch checkpoint, not a YAML config; give a YAML file "
                                        r"\(configs/\.\.\., or an experiment's config.yaml\)"):
        merge_file(get_cfg(), str(checkpoint))


def test_a_value_with_an_equals_sign_is_a_value():
    cfg = get_cfg()
    merge_list(cfg, ["DATA.DATADIR", "data/a=b", "BASIC.OUTPUT_ROOT", "out=1"])
    assert (cfg.DATA.DATADIR, cfg.BASIC.OUTPUT_ROOT) == ("data/a=b", "out=1")


def test_yaml_floats_without_a_dot_are_read_as_floats(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-2 as the string '1e-2'.
    config = tmp_path / "sci.yaml"
    config.write_text("SOLVER:\n  START_LR: 1e-2\n  WEIGHT_DECAY: 5E-4\nDATA:\n  IMAGE_MEAN: [5e-1, 0.5, 1]\n")
    cfg = get_cfg()
    merge_file(cfg, str(config))
    merge_list(cfg, ["KD.ALPHA", "'9e-1'"])
    assert (cfg.SOLVER.START_LR, cfg.SOLVER.WEIGHT_DECAY, cfg.KD.ALPHA) == (0.01, 5e-4, 0.9)
    assert cfg.DATA.IMAGE_MEAN == [0.5, 0.5, 1.0] and isinstance(cfg.SOLVER.START_LR, float)


def test_a_config_file_that_is_a_list_is_one_line(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="list.yaml must hold a mapping of sections, got list"):
        merge_file(get_cfg(), str(listed))


@pytest.mark.parametrize("opts, accepted", [
    (["BASIC.NUM_WORKERS", "-1"], None),
    (["BASIC.NUM_WORKERS", "0"], 0),
    (["DATA.PIPELINE", "'tensor'", "DATA.LESSEN_TYPE", "1"], None),
    (["DATA.PIPELINE", "'pil'", "DATA.LESSEN_TYPE", "1"], 1),  # lanczos: the PIL pipeline only
    (["DATA.RESIZE_SIZE", "64", "DATA.CROP_SIZE", "64"], 64),  # a crop the size of the resized image
])
def test_range_ends_of_workers_resampling_and_crop_size(opts, accepted):
    args = argparse.Namespace(config_file=os.path.join(REPO_ROOT, "configs/demo/cub_demo_student.yaml"), opts=opts)
    if accepted is None:
        with pytest.raises(UserError, match=opts[-2]):
            load_config(args)
    else:
        assert cfg_value(load_config(args), opts[-2]) == accepted


def test_yaml_whole_numbers_in_exponent_form_are_read_as_ints_and_fractions_refused(tmp_path):
    config = tmp_path / "sci.yaml"
    config.write_text("DATA:\n  CROP_SIZE: 2.24e2\n  RESIZE_SIZE: 256\nSOLVER:\n  NUM_EPOCHS: 1e2\n")
    cfg = get_cfg()
    merge_file(cfg, str(config))
    assert (cfg.DATA.CROP_SIZE, cfg.SOLVER.NUM_EPOCHS) == (224, 100) and isinstance(cfg.SOLVER.NUM_EPOCHS, int)
    config.write_text("SOLVER:\n  NUM_EPOCHS: 1.5e0\n")
    with pytest.raises(UserError, match="SOLVER.NUM_EPOCHS in .* expects an int, got '1.5e0'"):
        merge_file(get_cfg(), str(config))


def test_a_bool_key_given_a_lower_case_word_says_how_to_write_it():
    with pytest.raises(UserError, match="MODEL.PRETRAIN on the command line expects a bool, got 'true' .*; write "
                                        "True or False"):
        merge_list(get_cfg(), ["MODEL.PRETRAIN", "true"])


@pytest.mark.parametrize("word", ["abc", "nan", "inf", "1e-2x", ""])
def test_strings_that_are_not_finite_numbers_are_still_refused_for_floats(word, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f"SOLVER:\n  START_LR: '{word}'\n")
    with pytest.raises(UserError, match=f"SOLVER.START_LR in .* expects a float, got '{word}'"):
        merge_file(get_cfg(), str(config))


@pytest.mark.parametrize("opts, key, word", [
    (["SOLVER.NUM_EPOCHS", "BASIC.NUM_RUNS", "1"], "SOLVER.NUM_EPOCHS", "BASIC.NUM_RUNS"),
    (["MODEL.ARCH", "BASIC.NUM_RUNS", "1", "BASIC.SEED"], "MODEL.ARCH", "BASIC.NUM_RUNS"),
    (["BASIC.SEED", "1", "TRAIN.AMP", "TRAIN.COMPILE", "True"], "TRAIN.AMP", "TRAIN.COMPILE"),
])
def test_a_key_followed_by_another_key_is_named_as_missing_its_value(opts, key, word):
    with pytest.raises(UserError) as err:
        merge_list(get_cfg(), opts)
    assert str(err.value).startswith(f"config key {key} on the command line has no value (the next word, {word}, "
                                     "is a config key)"), str(err.value)


def test_config_file_flag_may_stand_anywhere_among_the_overrides():
    args = parse_args(["SOLVER.NUM_EPOCHS", "1", "--config_file", "c.yaml", "BASIC.SEED", "-1",
                       "SOLVER.WEIGHT_DECAY", "-1e-4"])
    assert args.config_file == "c.yaml"
    # Negative values stay values, in order (the config check then refuses them by name).
    assert args.opts == ["SOLVER.NUM_EPOCHS", "1", "BASIC.SEED", "-1", "SOLVER.WEIGHT_DECAY", "-1e-4"]


@pytest.mark.parametrize("argv, words", [
    ([], ["the following arguments are required: --config_file", "--help"]),
    (["--config_file", "c.yaml", "SOLVER.NUM_EPOCHS", "1", "--fresh"], ["unrecognized arguments: --fresh"]),
    (["--config_file"], ["argument --config_file: expected one argument"]),
    (["--config_file", "a.yaml", "--config-file=b.yaml"], ["--config_file is given twice (--config_file a.yaml, then "
                                                           "--config_file b.yaml); give one config file"]),
    # An abbreviation is the same flag (argparse takes it): it was not counted, and the last file was trained.
    (["--config_file", "a.yaml", "--config", "b.yaml"], ["--config_file is given twice (--config_file a.yaml, then "
                                                         "--config_file b.yaml); give one config file"]),
])
def test_command_line_mistakes_are_one_user_error_not_usage(argv, words):
    with pytest.raises(UserError) as err:
        parse_args(argv)
    assert "\n" not in str(err.value) and all(word in str(err.value) for word in words), str(err.value)


@pytest.mark.parametrize("opts, message", [
    (["BASIC.SEED", "-1"], "BASIC.SEED must be between 0 and 4294967295 (2**32 - BASIC.NUM_RUNS), got -1"),
    (["BASIC.SEED", str(2**32 - 1), "BASIC.NUM_RUNS", "2"], "BASIC.SEED must be between 0 and 4294967294"),
    (["SOLVER.WEIGHT_DECAY", "-1e-4"], "SOLVER.WEIGHT_DECAY must be >= 0, got -0.0001"),
    (["SOLVER.MUMENTUM", "-0.9"], "SOLVER.MUMENTUM must be in [0, 1) (SGD's momentum; 1 or more makes the steps "
                                  "grow without end), got -0.9"),
    (["SOLVER.MUMENTUM", "5"], "SOLVER.MUMENTUM must be in [0, 1)"),  # was a NaN loss after an epoch
    (["SOLVER.MUMENTUM", "1.0"], "SOLVER.MUMENTUM must be in [0, 1)"),
    # An epoch 0 or below never comes: the learning rate would silently never decay.
    (["SOLVER.LR_STEPS", "[-3]"], "SOLVER.LR_STEPS must be epochs >= 1 (the learning rate decays after each), got "
                                  "[-3]"),
    (["SOLVER.LR_STEPS", "[0,60]"], "SOLVER.LR_STEPS must be epochs >= 1"),
    (["DATA.GENERATE_IMAGE_SIZE", "[0, 60]"], "DATA.GENERATE_IMAGE_SIZE must be [width, height], both 4 to 4096 "
                                              "pixels (CUB's and Aircraft's images are about 500 x 375), got [0, 60]"),
    (["DATA.GENERATE_IMAGE_SIZE", "[1,1]"], "DATA.GENERATE_IMAGE_SIZE must be"),
    (["DATA.GENERATE_IMAGE_SIZE", "[80]"], "DATA.GENERATE_IMAGE_SIZE must be"),
    # The kernel's out-of-memory killer ended the command (no message) as it drew 100000 x 100000 images.
    (["DATA.GENERATE_IMAGE_SIZE", "[100000,100000]"], "DATA.GENERATE_IMAGE_SIZE must be"),
    # The 0-255 scale: every image normalised to near -500, without a word.
    (["DATA.IMAGE_MEAN", "[123.675,116.28,103.53]"], "DATA.IMAGE_MEAN and DATA.IMAGE_STD are on the images' 0-1 "
                                                     "scale (ImageNet's: [0.485, 0.456, 0.406] and [0.229, 0.224, "
                                                     "0.225]), got [123.675, 116.28, 103.53] and [0.229, 0.224, 0.225] "
                                                     "(the 0-255 scale?)"),
    (["DATA.CACHE_SIZE", "-1"], "DATA.CACHE_SIZE must be >= 0 (0 = the larger of DATA.RESIZE_SIZE and 256), got -1"),
    (["BASIC.DISP_FREQ", "0"], "BASIC.DISP_FREQ must be >= 1 (a progress line every that many steps), got 0"),
    (["BASIC.PARALLEL_RUNS", "-1"], "BASIC.PARALLEL_RUNS must be >= 0 (0 = one run per GPU), got -1"),
    (["DATA.GENERATE_PER_CLASS", "0"], "DATA.GENERATE_PER_CLASS must be >= 1 (images per class in each split), got 0"),
    (["DATA.IMAGE_STD", "[0.2,0.0,0.2]"], "DATA.IMAGE_STD must be positive (the images are divided by it), got "
                                          "[0.2, 0.0, 0.2]"),
    (["SOLVER.LR_DECAY_FACTOR", "-1.0"], "SOLVER.LR_DECAY_FACTOR must be positive, got -1.0"),
    (["KD.ALPHA", "5.0"], "KD.ALPHA must be between 0 and 1 (the cross-entropy gets 1 - KD.ALPHA), got 5.0"),
    (["KD.ALPHA", "-0.1"], "KD.ALPHA must be between 0 and 1 (the cross-entropy gets 1 - KD.ALPHA), got -0.1"),
    # A zero temperature is a NaN once the teacher has loaded; a negative one inverts the softmax (T^2 stays >= 0).
    (["KD.TEMP", "0.0"], "KD.TEMP must be positive (the logits are divided by it), got 0.0"),
    (["KD.TEMP", "-4.0"], "KD.TEMP must be positive (the logits are divided by it), got -4.0"),
    (["DKD.TEMP", "0.0"], "DKD.TEMP must be positive (the logits are divided by it), got 0.0"),
    (["DKD.TEMP", "-4.0"], "DKD.TEMP must be positive (the logits are divided by it), got -4.0"),
    *[([key, "-1.0"], f"{key} must be >= 0 (it weights a loss term), got -1.0")
      for key in LOSS_WEIGHT_KEYS],
    (["SOLVER.START_LR", "1e999"], "config key SOLVER.START_LR on the command line must be a finite number, got inf"),
    # Was a ValueError traceback from islice after a whole training epoch.
    (["TEST.BATCH_SIZE", "10000000000000000000"], "config key TEST.BATCH_SIZE on the command line must be below 2**63 "
                                                  "in size, got 10000000000000000000"),
    (["SOLVER.NUM_EPOCHS", "1e19"], "config key SOLVER.NUM_EPOCHS on the command line must be below 2**63 in size"),
    (["TRAIN.COMPILE_BACKEND", "'aot_eager'", "TRAIN.COMPILE_MODE", "'reduce-overhead'"],
     "TRAIN.COMPILE_MODE reduce-overhead is a mode of the inductor backend, but TRAIN.COMPILE_BACKEND is aot_eager; "
     "set TRAIN.COMPILE_MODE default or TRAIN.COMPILE_BACKEND inductor"),
])
def test_numbers_that_would_crash_later_are_refused_with_their_allowed_range(opts, message):
    args = argparse.Namespace(config_file=os.path.join(REPO_ROOT, "configs/base/cub/cub_resnet_single_224.yaml"),
                              opts=["BASIC.NUM_RUNS", "1", *opts])
    with pytest.raises(UserError) as err:
        load_config(args)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("opts, values", [
    (["KD.ALPHA", "1.0"], {"KD.ALPHA": 1.0}),  # pure KD
    (["KD.ALPHA", "0.0"], {"KD.ALPHA": 0.0}),
    # The last first seed that leaves run 1's seed below 2**32 (numpy's seeds are 32-bit).
    (["BASIC.SEED", str(2**32 - 2), "BASIC.NUM_RUNS", "2"], {"BASIC.SEED": 2**32 - 2, "BASIC.NUM_RUNS": 2}),
])
def test_the_ends_of_an_allowed_range_are_accepted(opts, values):
    args = argparse.Namespace(config_file=os.path.join(REPO_ROOT, "configs/base/cub/cub_resnet_single_224.yaml"),
                              opts=opts)
    cfg = load_config(args)
    assert {key: cfg_value(cfg, key) for key in values} == values


def test_loaded_config_is_frozen():
    args = argparse.Namespace(config_file=os.path.join(REPO_ROOT, "configs/base/cub/cub_resnet_single_224.yaml"),
                              opts=["BASIC.SEED", "3"])
    cfg = load_config(args)
    assert cfg.is_frozen() and cfg.BASIC.SEED == 3
    with pytest.raises(AttributeError):
        cfg.BASIC.SEED = 4


def test_every_shipped_loss_weight_is_refused_below_zero():
    assert set(LOSS_WEIGHT_KEYS) >= {"AT.BETA", "SP.BETA", "ICKD.BETA", "DKD.ALPHA", "DKD.BETA", "FSR.ETA"}


@pytest.mark.parametrize("opts, key", [
    (["DATA.DATASET", "imagenet"], "DATA.DATASET"),
    (["MODEL.KDTYPE", "fitnet"], "MODEL.KDTYPE"),
    (["DATA.LESSEN_RATIO", "0.5"], "DATA.LESSEN_RATIO"),
    (["TRAIN.AMP", "fp8"], "TRAIN.AMP"),
    (["TRAIN.COMPILE_MODE", "fast"], "TRAIN.COMPILE_MODE"),
    (["TRAIN.COMPILE_BACKEND", "cudagraphs"], "TRAIN.COMPILE_BACKEND must be one of inductor, aot_eager, eager"),
    (["DATA.PIPELINE", "gpu"], "DATA.PIPELINE"),
    (["DATA.LESSEN_TYPE", "1"], "DATA.PIPELINE"),
    (["TAS.STAGE1_KDTYPE", "isrd"], f"TAS.STAGE1_KDTYPE must be one of {', '.join(KDTYPES)}, got 'isrd'"),
    (["TAS.FEAT_INTERP", "area"],
     "TAS.FEAT_INTERP must be one of bilinear, bicubic, nearest, bilinear_align_corners, got 'area'"),
    (["TAS.FEAT_WEIGHTS", "[1.0, -1.0, 1.0, 1.0]"], r"TAS.FEAT_WEIGHTS must be >= 0 \(0 switches a feature off\)"),
    (["TAS.VIT_BLOCKS", "[0, 6, 9, 12]"], r"TAS.VIT_BLOCKS are 1-based block numbers, got \[0, 6, 9, 12\]"),
    (["BASIC.OUTPUT_ROOT", "''"], "BASIC.OUTPUT_ROOT is empty"),  # an unset $OUT: it would write beside the code
    # A folder named under Latin-1 (its bytes arrive as lone surrogates): tensorboard's writer failed in a traceback.
    (["BASIC.OUTPUT_ROOT", "/scratch/lat\udce9n"], r"BASIC.OUTPUT_ROOT '/scratch/lat\\udce9n' holds bytes that are "
                                                   "not UTF-8 text"),
])
def test_invalid_values_are_refused_after_merging(opts, key):
    args = argparse.Namespace(config_file=os.path.join(REPO_ROOT, "configs/ts/cub/cub_resnet50_resnet_kd.yaml"),
                              opts=opts)
    with pytest.raises(UserError, match=key):
        load_config(args)


def test_diff_cfg_names_differing_keys():
    a, b = get_cfg(), get_cfg()
    b.SOLVER.START_LR = 0.5
    b.BASIC.NUM_WORKERS = 0
    assert diff_cfg(a, b, ignore=["BASIC.NUM_WORKERS"]) == ["SOLVER.START_LR (0.1 -> 0.5)"]


def test_a_key_the_saved_config_lacks_counts_as_its_default():
    saved, requested = get_cfg(), get_cfg()
    del saved.DKD["RELEASE_WARMUP"]  # a config.yaml written before the key existed
    del saved["TAS"]  # a whole section too
    assert diff_cfg(saved, requested) == []
    requested.DKD.RELEASE_WARMUP = True
    requested.TAS.FEAT_INTERP = "nearest"
    assert diff_cfg(saved, requested) == ["DKD.RELEASE_WARMUP (absent, i.e. the default False -> True)",
                                          "TAS.FEAT_INTERP (absent, i.e. the default 'bilinear' -> 'nearest')"]


_BUILT: dict = {}


def _features(arch: str, num_classes: int, size: int):
    """Build `arch` once per (arch, classes, size) for the whole session and return its feature shapes."""
    from lib.models.model_builder import build_model, feature_shapes

    key = (arch, num_classes, size)
    if key not in _BUILT:
        _BUILT[key] = feature_shapes(build_model(arch, num_classes, False), size)
    return _BUILT[key]


TERMS = {"kd": {"loss_ce", "loss_kd"}, "isrd": {"loss_ce", "loss_kd", "loss_isrd"},
         "tas": {"loss_ce", "loss_kd", "loss_isrd", "loss_fkd"}}


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=[os.path.relpath(p, REPO_ROOT) for p in ALL_CONFIGS])
def test_every_shipped_config_builds_its_networks_and_distillation_takes_a_finite_step(path):
    from lib.distillers import build_distiller, check_archs
    from lib.models.model_builder import build_model

    no_download = ["MODEL.PRETRAIN", False, "MODEL.PRETRAIN_S", False, "MODEL.PRETRAIN_T", False,
                   "MODEL.PRETRAIN_A", False]
    cfg = load_config(argparse.Namespace(config_file=path, opts=no_download))
    if not cfg.MODEL.ARCH_T:
        check_archs(cfg, "single")
        assert len(_features(cfg.MODEL.ARCH, cfg.DATA.NUM_CLASSES, small_crop_size(cfg))) >= 5
        return
    # The published distillation: a random-weight teacher (or assistant) stands in for the trained one.
    method = "tas" if cfg.MODEL.ARCH_A else "isrd" if cfg.FSR.ETA > 0 else cfg.MODEL.KDTYPE
    torch.manual_seed(0)
    big = build_model(cfg.MODEL.ARCH_A or cfg.MODEL.ARCH_T, cfg.DATA.NUM_CLASSES, False)
    distiller = build_distiller(cfg, method, teacher=big)
    distiller.train()
    small, large = small_crop_size(cfg), cfg.DATA.CROP_SIZE
    _, losses = distiller.forward_train(torch.randn(2, 3, small, small), torch.randn(2, 3, large, large),
                                        torch.tensor([0, 1]), 1)
    assert set(losses) == TERMS[method]
    assert all(torch.isfinite(v) for v in losses.values()), losses
    if method in ("isrd", "tas"):  # the decoder maps the student's input feature onto the large image
        feature = distiller.student(torch.randn(2, 3, small, small), return_feat=True, preReLU=True)[1][0]
        assert distiller.decoder(feature).shape == (2, 3, large, large)


def test_a_relative_config_path_is_found_from_another_folder_through_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = get_cfg()
    merge_file(cfg, "configs/demo/cub_demo_teacher.yaml")
    assert cfg.DATA.DATADIR == "data/demo_cub"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text("SOLVER:\n  NUM_EPOCHS: 7\n")
    merge_file(cfg, "configs/mine.yaml")  # the current folder comes first
    assert cfg.SOLVER.NUM_EPOCHS == 7


@pytest.mark.parametrize("opts, key, joined, quoted", [
    (["SOLVER.LR_STEPS", "[3,", "6]"], "SOLVER.LR_STEPS", "[3,6]", "[3, 6]"),
    (["SOLVER.LR_STEPS", "[3,", "6]", "SOLVER.NUM_EPOCHS", "8"], "SOLVER.LR_STEPS", "[3,6]", "[3, 6]"),
    (["SOLVER.LR_STEPS", "[", "3,", "6", "]"], "SOLVER.LR_STEPS", "[3,6]", "[ 3, 6 ]"),
    (["BASIC.SEED", "1", "DATA.GENERATE_IMAGE_SIZE", "(60,", "80)"], "DATA.GENERATE_IMAGE_SIZE", "(60,80)",
     "(60, 80)"),
])
def test_a_list_the_shell_split_at_a_space_is_named_with_how_to_write_it(opts, key, joined, quoted):
    with pytest.raises(UserError) as err:
        merge_list(get_cfg(), opts)
    words = len(quoted.split())
    assert str(err.value) == (f"the shell split the value of {key} at its spaces: {quoted} came as {words} words; "
                              f'write the list without spaces, {key} {joined}, or in quotes, {key} "{quoted}"')
    for value in (joined, quoted):  # both suggestions merge
        merge_list(get_cfg(), [key, value])


def test_a_list_that_is_never_closed_is_still_a_wrong_type_not_a_split_list():
    with pytest.raises(UserError, match=r"config key BASIC.GPU_ID on the command line expects a list, got '\[0'"):
        merge_list(get_cfg(), ["BASIC.GPU_ID", "[0", "SOLVER.LR_STEPS", "[3]"])


@pytest.mark.parametrize("argv", [["--config-file", "c.yaml", "BASIC.SEED", "1"],
                                  ["BASIC.SEED", "1", "--config-file=c.yaml"]])
def test_config_file_may_be_spelled_with_a_hyphen(argv):
    args = parse_args(argv)
    assert args.config_file == "c.yaml" and args.opts == ["BASIC.SEED", "1"]


def _load(*opts):
    path = os.path.join(REPO_ROOT, "configs/demo/cub_demo_teacher.yaml")
    return load_config(argparse.Namespace(config_file=path, opts=list(opts)))


def test_an_override_given_twice_takes_the_last_value_with_one_warning_line(capsys):
    cfg = _load("SOLVER.NUM_EPOCHS", "4", "BASIC.SEED", "1", "SOLVER.NUM_EPOCHS", "6")
    assert cfg.SOLVER.NUM_EPOCHS == 6
    assert capsys.readouterr().err == ("warning: SOLVER.NUM_EPOCHS is given twice on the command line; using the "
                                       "last value, 6\n")
    cfg = _load("BASIC.SEED", "1", "BASIC.SEED", "2", "BASIC.SEED", "3")
    assert cfg.BASIC.SEED == 3
    err = capsys.readouterr().err
    assert err == "warning: BASIC.SEED is given 3 times on the command line; using the last value, 3\n"


def test_a_cache_size_below_the_crop_is_warned_of(capsys):
    _load("DATA.CACHE_SIZE", "48")  # the demo teacher crops 64 px
    assert capsys.readouterr().err == ("warning: DATA.CACHE_SIZE 48 is below DATA.CROP_SIZE 64: the training crops "
                                       "are cut from images cached smaller than a crop, and enlarged (0 caches them at "
                                       "the larger of DATA.RESIZE_SIZE and 256)\n")
    _load("DATA.CACHE_SIZE", "64")
    _load("DATA.CACHE_SIZE", "0")
    _load("DATA.CACHE_SIZE", "48", "DATA.PIPELINE", "pil")  # the pil pipeline caches nothing
    assert capsys.readouterr().err == ""


def test_a_copied_experiments_own_config_says_that_it_trains_under_its_old_root(tmp_path, capsys):
    # An experiment folder copied to another disk and resumed with its config.yaml, which names the old root: the
    # command trains under that root (a new experiment there), not in the copy.
    cfg = _load()
    cfg.defrost()
    cfg.BASIC.OUTPUT_ROOT = str(tmp_path / "old")
    folder = tmp_path / "new" / "cub" / "5runs_resnet18_56_seed0_0.01"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(cfg.dump())
    (folder / "inputs.json").write_text("{}")
    config = str(folder / "config.yaml")
    (folder / "inputs.json").unlink()
    load_config(parse_args(["--config_file", config]))  # a config.yaml no command saved there: no note
    assert capsys.readouterr().err == ""
    (folder / "inputs.json").write_text("{}")
    load_config(parse_args(["--config_file", config]))
    assert capsys.readouterr().err == (
        f"note: {config} is the saved config of the experiment in {folder}, under {tmp_path / 'new'}; this command "
        f"writes its experiment under the BASIC.OUTPUT_ROOT that it names, {tmp_path / 'old'}; to resume that folder "
        f"where it is now, add BASIC.OUTPUT_ROOT {tmp_path / 'new'}\n")
    load_config(parse_args(["--config_file", config, "BASIC.OUTPUT_ROOT", str(tmp_path / "new")]))
    load_config(parse_args(["--config_file", config, "BASIC.OUTPUT_ROOT", str(tmp_path / "third")]))  # on purpose
    load_config(parse_args(["--config_file", config], trains=False))  # tools/eval.py's use of it
    load_config(parse_args(["--config_file", config], parser=config_parser(trains=False)))  # tools/benchmark.py's
    assert capsys.readouterr().err == ""


def test_fresh_start_saved_true_by_an_older_version_in_an_experiments_config_is_not_applied(tmp_path, capsys):
    # Given its own config.yaml (the way to resume a copy), that experiment was moved aside and trained again.
    cfg = _load()
    cfg.defrost()
    cfg.BASIC.OUTPUT_ROOT, cfg.BASIC.FRESH_START = str(tmp_path), True
    folder = tmp_path / "cub" / "5runs_resnet18_56_seed0_0.01"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(cfg.dump())
    config = str(folder / "config.yaml")
    assert load_config(parse_args(["--config_file", config])).BASIC.FRESH_START  # no inputs.json: any YAML file
    (folder / "inputs.json").write_text("{}")
    mine = folder / "mine.yaml"  # the user's own file beside a saved experiment's: taken as it is
    mine.write_text(cfg.dump())
    assert load_config(parse_args(["--config_file", str(mine)])).BASIC.FRESH_START
    assert capsys.readouterr().err == ""
    assert not load_config(parse_args(["--config_file", config])).BASIC.FRESH_START
    assert capsys.readouterr().err == (
        f"note: BASIC.FRESH_START True in {config} is not applied (saved there by an older version, it would move "
        "that experiment aside and train it again); to start over, add BASIC.FRESH_START True to the command\n")
    assert load_config(parse_args(["--config_file", config, "BASIC.FRESH_START", "True"])).BASIC.FRESH_START
    load_config(parse_args(["--config_file", config], trains=False))  # tools/eval.py reads no FRESH_START: no note
    assert capsys.readouterr().err == ""


def test_a_num_runs_set_for_a_one_run_script_is_said_to_be_ignored(monkeypatch, capsys):
    # `train_teacher_1run.py ... BASIC.NUM_RUNS 3` trained one teacher without a word.
    monkeypatch.setattr(sys, "argv", ["tools_0_base/train_teacher_1run.py"])
    path = os.path.join(REPO_ROOT, "configs/demo/cub_demo_teacher.yaml")
    load_config(argparse.Namespace(config_file=path, opts=["BASIC.NUM_RUNS", "3"]), one_run=True)
    assert capsys.readouterr().err == ("note: BASIC.NUM_RUNS 3 is ignored: train_teacher_1run.py trains one run (seed "
                                       "BASIC.SEED 0); the *_5runs.py scripts train BASIC.NUM_RUNS seeded runs\n")
    load_config(argparse.Namespace(config_file=path, opts=[]), one_run=True)  # the default: nothing to say
    load_config(argparse.Namespace(config_file=path, opts=["BASIC.NUM_RUNS", "1"]), one_run=True)  # what it does
    load_config(argparse.Namespace(config_file=path, opts=["BASIC.NUM_RUNS", "3"]))  # a script that trains them
    assert capsys.readouterr().err == ""


def test_an_override_repeated_with_the_same_value_or_refused_gives_no_warning(capsys):
    _load("TRAIN.AMP", "bf16", "TRAIN.AMP", "'bf16'", "SOLVER.NUM_EPOCHS", "4", "SOLVER.NUM_EPOCHS", "4.0")
    assert capsys.readouterr().err == ""
    # A refused config stays one line: the error, not a warning before it.
    with pytest.raises(UserError, match="SOLVER.NUM_EPOCHS must be positive"):
        _load("SOLVER.NUM_EPOCHS", "4", "SOLVER.NUM_EPOCHS", "0")
    assert capsys.readouterr().err == ""


def test_a_key_typed_in_lower_case_is_suggested_in_upper_case(tmp_path):
    with pytest.raises(UserError) as err:
        merge_list(get_cfg(), ["solver.num_epochs", "3"])
    assert str(err.value) == "unknown config key solver.num_epochs on the command line; did you mean SOLVER.NUM_EPOCHS?"
    with pytest.raises(UserError, match="did you mean SOLVER.NUM_EPOCHS,"):
        merge_list(get_cfg(), ["solver.num_epoch", "3"])
    config = tmp_path / "lower.yaml"
    config.write_text("solver:\n  start_lr: 0.1\n")
    with pytest.raises(UserError, match=r"unknown config key solver.start_lr in .*; did you mean SOLVER.START_LR\?$"):
        merge_file(get_cfg(), str(config))


def _help(argv, parser=None, **kwargs):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv, parser=parser, **kwargs)
    assert exit_.value.code == 0


def test_training_help_shows_the_real_usage_and_says_how_to_resume_and_where_outputs_go(capsys):
    _help(["--help"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(" [-h] --config_file FILE [KEY VALUE ...]"), out
    text = " ".join(out.split())
    assert "Outputs go under BASIC.OUTPUT_ROOT (default ckpt)" in text
    assert "Re-running the same command resumes" in text and "BASIC.FRESH_START True" in text
    _help(["-h"], trains=False)  # tools/benchmark.py, tools/eval.py: nothing to resume
    assert "resumes" not in capsys.readouterr().out


def test_a_script_flag_appears_in_the_usage_before_the_overrides(capsys):
    from lib.config import config_parser

    parser = config_parser("", trains=False)
    parser.add_argument("--steps", type=int, metavar="N")
    _help(["--help"], parser=parser)
    assert "[-h] --config_file FILE [--steps N] [KEY VALUE ...]" in " ".join(capsys.readouterr().out.split())


def test_config_paths_with_dot_segments_or_a_home_folder_resolve_to_one_absolute_path(monkeypatch, tmp_path):
    assert resolve_path("./ckpt/cub/x.pth") == resolve_path("ckpt/cub/../cub/x.pth") == os.path.join(
        REPO_ROOT, "ckpt", "cub", "x.pth")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path("~/data/cub") == os.path.join(str(tmp_path), "data", "cub")
