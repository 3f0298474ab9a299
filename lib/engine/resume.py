"""What an earlier attempt of an experiment left, checked against this command before anything is resumed, re-reported
or moved aside: its config, the checkpoints it started from (inputs.json) and its data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from yacs.config import CfgNode

from lib.config import UNUSED_KEYS, cfg_value, diff_cfg, resolve_path
from lib.datasets import TwoScaleDataset, build_dataset
from lib.distillers import method_checkpoints
from lib.utils.errors import UserError
from lib.utils.files import file_digest, run_folders

from .checkpoint import load_json_object, read_saved

# Keys that change how fast or where a run goes, not what it learns, and the keys nothing reads: a resumed or
# re-run experiment may differ in these from the saved config.
RUNTIME_KEYS = ("BASIC.GPU_ID", "BASIC.DEVICE", "BASIC.NUM_WORKERS", "BASIC.PARALLEL_RUNS", "BASIC.DISP_FREQ",
                "BASIC.FRESH_START", "BASIC.OUTPUT_ROOT",  # (the folder found is the same, however it is spelt)
                "TEST.CHECKPOINT",  # (tools/eval.py's; training never reads it. TEST.BATCH_SIZE is not here: the
                # test loss's rounding depends on it)
                "DATA.GENERATE_IF_MISSING",  # (it only makes a dataset where there is none)
                *UNUSED_KEYS)


def _read_saved_cfg(path: str) -> CfgNode:
    """A saved config.yaml (ValueError when it is not one of this project's)."""
    with open(path) as f:
        saved = CfgNode.load_cfg(f)
    if not isinstance(saved, CfgNode) or "BASIC" not in saved or "DATA" not in saved:
        raise ValueError("not a config of this project")
    return saved


# Keys that name a file or folder: the same one spelt another way (./ckpt/x, an absolute path, a link) is not
# another config. What a checkpoint holds is checked apart, by its SHA-256 in inputs.json.
PATH_KEYS = ("DATA.DATADIR", "MODEL.MODELDICT_T", "MODEL.MODELDICT_A", "MODEL.MODELDICT_S", "MODEL.PRETRAIN_FILE",
             "MODEL.PRETRAIN_FILE_S", "TAS.PRETRAIN_FILE_A")


def _same_path(a: str, b: str) -> bool:
    """Whether two values of a path key name the same file or folder."""
    if not a or not b:
        return a == b
    return os.path.realpath(resolve_path(a)) == os.path.realpath(resolve_path(b))


def _moved_content(cfg: CfgNode, key: str, entry: object) -> str | None:
    """None when the file or folder that `key` names in `cfg` holds what inputs.json's `entry` recorded of the one the
    experiment started from (the same SHA-256 of a checkpoint; DATA.DATADIR: the same splits, files, labels and sizes,
    read from the annotations without decoding an image); else what differs ('' when nothing was recorded)."""
    if not isinstance(entry, dict):
        return ""  # (not recorded: an older experiment, or a key its method does not read)
    value = str(cfg_value(cfg, key) or "")
    if not value:
        return ""
    path = resolve_path(value)
    if key != "DATA.DATADIR":
        try:
            digest = file_digest(path, "sha256")
        except OSError:  # missing, a folder, unreadable
            return "which is not a readable file"
        return None if entry.get("sha256") == digest else "which holds other weights"
    if not all(isinstance(entry.get(split), dict) for split in ("train", "test")):
        return ""  # (an older entry without the splits' fingerprints)
    try:
        now = {split: build_dataset(cfg, is_train, load_images=False)
               for split, is_train in (("train", True), ("test", False))}
    except (UserError, OSError):  # missing, unreadable, another layout or class count
        return "which is not a dataset of this config"
    same = all(isinstance(entry.get(split), dict) and entry[split].get("sha256") == dataset.fingerprint["sha256"]
               for split, dataset in now.items())
    return None if same else "which holds other images, labels or file sizes"


def check_saved_config(cfg: CfgNode, exp_dir: str) -> None:
    """Refuse to resume or re-report an experiment saved with another config (keys of RUNTIME_KEYS aside, and path
    keys that name the same file, or a copy of what the experiment started from: a dataset or teacher moved, or
    copied to a node's local disk by each job of a scheduler)."""
    saved = read_saved(os.path.join(exp_dir, "config.yaml"), _read_saved_cfg,
                       "restore it, or add BASIC.FRESH_START True to start over")
    # BASIC.NUM_RUNS is in the folder's name already ("<n>runs_"), except for the teacher's script, which ignores it.
    ignore = RUNTIME_KEYS + ("BASIC.NUM_RUNS",)
    inputs = _saved_inputs(exp_dir)
    _check_not_edited(exp_dir, saved, inputs, ignore)
    moved = [key for key in PATH_KEYS
             if not _same_path(str(cfg_value(saved, key) or ""), str(cfg_value(cfg, key) or ""))]
    notes = {}  # what differs in a moved key's content (inputs.json records it)
    if moved and not diff_cfg(saved, cfg, ignore=ignore + tuple(moved)):  # (no other difference to name)
        notes = {key: _moved_content(cfg, key, inputs.get(key)) for key in moved}
        moved = [key for key in moved if notes[key] is not None]
    ignore += tuple(key for key in PATH_KEYS if key not in moved)
    differing = [f"{line[:-1]}, {notes[key]})" if notes.get(key := line.split(" ")[0]) else line
                 for line in diff_cfg(saved, cfg, ignore=ignore)]
    if differing:
        raise UserError(f"{exp_dir} holds an experiment with another config: {'; '.join(differing)}. "
                        "Re-run with the same settings to resume; to keep both (a sweep, say), give this one its own "
                        "BASIC.OUTPUT_ROOT; or add BASIC.FRESH_START True to move the old one aside and start over")


# inputs.json's copy of the config.yaml an experiment was given when it started (check_saved_config).
STARTED_CONFIG = "config.yaml as started"


def _check_not_edited(exp_dir: str, saved: CfgNode, inputs: dict, ignore: tuple[str, ...]) -> None:
    """Refuse an experiment whose config.yaml has been edited since it started (keys of `ignore` aside; a path key
    edited to name the same file, or a copy of what it named, is no edit): given as the command's config, an edited
    file would be checked against itself, and the remaining runs trained with the new values beside the runs
    trained with the old. `inputs`: its inputs.json."""
    started = inputs.get(STARTED_CONFIG)
    if not isinstance(started, str):
        return  # an experiment from before the copy was kept
    try:
        original = CfgNode.load_cfg(started)
    except Exception:  # (yaml's errors have no common base but Exception) a damaged inputs.json is read_saved's
        return
    edited = diff_cfg(original, saved, ignore=ignore + PATH_KEYS)
    for key in PATH_KEYS:  # a path edited to another spelling or a copy of the same content is no edit
        then, now = str(cfg_value(original, key) or ""), str(cfg_value(saved, key) or "")
        if not _same_path(then, now):
            what = _moved_content(saved, key, inputs.get(key))
            if what is not None:
                edited.append(f"{key} ({then!r} -> {now!r}{', ' + what if what else ''})")
    if edited:
        raise UserError(f"{os.path.join(exp_dir, 'config.yaml')} has been edited since the experiment started "
                        f"({'; '.join(edited)}): its runs were trained with the first values. Undo the edit to "
                        "resume; to train the new values, give them to a config of your own with its own "
                        "BASIC.OUTPUT_ROOT, or add BASIC.FRESH_START True to move this experiment aside and start over")


def runs_elsewhere(cfg: CfgNode, exp_dir: str, num_runs: int) -> list[tuple[str, list[int]]]:
    """The experiments beside `exp_dir` of the same config with another BASIC.NUM_RUNS (<m>runs_<the same name>),
    and which of the runs 0..num_runs-1 they have finished: run i has seed BASIC.SEED + i in each, so a new
    experiment would train them again."""
    parent, name = os.path.split(exp_dir)
    rest = name.partition("runs_")[2]
    try:
        siblings = sorted(os.listdir(parent))
    except OSError:
        return []
    found = []
    for other in siblings:
        count, _, other_rest = other.partition("runs_")
        folder = os.path.join(parent, other)
        if other == name or other_rest != rest or not count.isdigit():
            continue
        finished = [i for path, i in run_folders(os.path.join(folder, "ckpt"))
                    if i < num_runs and os.path.isfile(os.path.join(path, "result.json"))]
        if not finished:
            continue
        try:
            check_saved_config(cfg, folder)
        except UserError:  # another config (or one that cannot be read): not the same runs
            continue
        found.append((folder, finished))
    return found


def checkpoint_fingerprints(cfg: CfgNode, method: str, every_key: bool = False) -> dict[str, dict[str, str]]:
    """{config key: {"path", "sha256"}} of the checkpoints `method` starts from (what check_saved_inputs compares);
    `every_key`: of every file a path key names too, read or not (inputs.json: a copy of any of them elsewhere is
    then the same file, _moved_content)."""
    files = {key: resolve_path(str(cfg_value(cfg, key))) for key in PATH_KEYS
             if every_key and key != "DATA.DATADIR" and cfg_value(cfg, key)}
    files.update(method_checkpoints(cfg, method))
    return {key: {"path": path, "sha256": file_digest(path, "sha256")}
            for key, path in files.items() if os.path.isfile(path)}


def _saved_inputs(exp_dir: str) -> dict:
    """An experiment's inputs.json ({} for an experiment from before it was written)."""
    saved_path = os.path.join(exp_dir, "inputs.json")
    if not os.path.isfile(saved_path):
        return {}
    return read_saved(saved_path, load_json_object, "delete it to skip this check, or add BASIC.FRESH_START True "
                      "to start over")


def check_saved_inputs(cfg: CfgNode, method: str, exp_dir: str) -> None:
    """Refuse to resume or re-report an experiment whose teacher (assistant, student init) file has changed since."""
    saved = _saved_inputs(exp_dir)
    for key, now in checkpoint_fingerprints(cfg, method).items():
        entry = saved.get(key)
        then = entry.get("sha256") if isinstance(entry, dict) else None
        if then and then != now["sha256"]:
            raise UserError(f"{key} {now['path']} has changed since {exp_dir} started from it (SHA-256 {then[:12]} "
                            f"then, {now['sha256'][:12]} now): what it holds was learnt from the old file. Restore "
                            "that, or add BASIC.FRESH_START True to start over from the new one")


def data_fingerprint(train_set: TwoScaleDataset, test_set: TwoScaleDataset) -> dict[str, dict]:
    """{"DATA.DATADIR": {"path", "train", "test", "train_cache_size"}}: the entry of inputs.json a resumed run checks
    its data against."""
    return {"DATA.DATADIR": {"path": train_set.root, "train": train_set.fingerprint, "test": test_set.fingerprint,
                             "train_cache_size": train_set.cache_size}}


def check_saved_data(cfg: CfgNode, exp_dir: str, train_set: TwoScaleDataset, test_set: TwoScaleDataset) -> None:
    """Refuse to resume an experiment whose dataset (a split's files, labels or file sizes), or the size its training
    images are cached at, has changed since."""
    entry = _saved_inputs(exp_dir).get("DATA.DATADIR")
    if not isinstance(entry, dict):
        return  # an experiment from before its data was fingerprinted
    # The cache's side follows a rule (lib.config.train_cache_size) that a new version of this code may change; an
    # entry from before it was recorded was written under the first rule, CACHE_SIZE or RESIZE_SIZE.
    then = entry.get("train_cache_size", cfg.DATA.CACHE_SIZE or cfg.DATA.RESIZE_SIZE)
    now = train_set.cache_size
    if None not in (then, now) and then != now:
        raise UserError(f"{exp_dir} started with its training images cached at a shorter side of {then} px, and "
                        f"this version of the code caches them at {now} px (DATA.CACHE_SIZE 0 now means the larger of "
                        "RESIZE_SIZE and 256): its remaining runs would crop other images. Add BASIC.FRESH_START True "
                        "to start over, or finish it with the version it started with")
    for split, dataset in (("train", train_set), ("test", test_set)):
        then, now = entry.get(split), dataset.fingerprint
        if isinstance(then, dict) and then.get("sha256") not in (None, now["sha256"]):
            what = (f"{then.get('images')} images then, {now['images']} now" if then.get("images") != now["images"]
                    else f"{now['images']} images, but other files, labels or file sizes")
            raise UserError(f"the {dataset.split} split of DATA.DATADIR {dataset.root} has changed since {exp_dir} "
                            f"started on it ({what}): its saved runs were trained on the old data. Restore that, or "
                            "add BASIC.FRESH_START True to start over on the new data")


def _saved_any_epoch(exp_dir: str) -> bool:
    """Whether an experiment folder holds a run's checkpoint or result (a start that failed in epoch 1 does not)."""
    return any(name in ("last.pth", "result.json", "results.json")
               for _, _, files in os.walk(exp_dir) for name in files)


def stale_attempt(exp_dir: str, *checks: Callable[[], None]) -> bool:
    """Run the checks of an earlier attempt in `exp_dir` against this command: True when one fails and the attempt
    saved no epoch (another config, teacher or dataset, and nothing to keep); a failure where it did is raised."""
    try:
        for check in checks:
            check()
    except UserError:
        if _saved_any_epoch(exp_dir):
            raise
        return True
    return False


def move_aside(exp_dir: str) -> str:
    """Rename an earlier attempt to <exp_dir>.old<k> (the first k free) and return that name."""
    n = 1
    while os.path.exists(f"{exp_dir}.old{n}"):
        n += 1
    shutil.move(exp_dir, f"{exp_dir}.old{n}")
    return f"{exp_dir}.old{n}"
