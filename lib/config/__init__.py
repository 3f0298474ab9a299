"""Config loading: defaults + YAML file + KEY VALUE overrides, checked once and frozen.

Usage in a script::

    cfg = load_config(parse_args())

`get_cfg()` returns a fresh, unfrozen copy of the defaults (lib/config/defaults.py documents every key).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import math
import os
import re
import sys
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from yacs.config import CfgNode

from lib.utils.errors import (
    TORCH_FILE_STARTS,
    ArgumentParser,
    UserError,
    first_line,
    nonempty,
    require_file,
    torchrun_rank_other_than_0,
)

from .defaults import _C, UNUSED_KEYS

__all__ = ["get_cfg", "load_config", "parse_args", "config_parser", "merge_file", "merge_list", "check_cfg",
           "resolve_path", "cfg_value", "diff_cfg", "given_on_the_command_line", "pass_on_the_command_line",
           "small_crop_size", "small_resize_size", "train_cache_size",
           "REPO_ROOT", "UNUSED_KEYS", "KDTYPES", "LOSS_WEIGHT_KEYS", "PIPELINES", "TENSOR_INTERPOLATION",
           "FKD_INTERP_MODES"]

def _repo_root() -> str:
    """The checkout holding this `lib` (installed with `pip install -e .`), else the working directory."""
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return checkout if os.path.isdir(os.path.join(checkout, "configs")) else os.getcwd()


# The repository root: relative DATADIR / OUTPUT_ROOT / checkpoint paths are resolved against it, so the
# published commands work from any directory. A non-editable install resolves them against the working directory.
REPO_ROOT = _repo_root()

DATASETS = ("cub", "aircraft")
# MODEL.KDTYPE's methods: the one list that tools_1_ts/train_kd_5runs.py, TAS.STAGE1_KDTYPE, the benchmark's
# --method, the distillers and the summary's columns read (a new method joins it: docs/extending.md).
KDTYPES = ("kd", "at", "sp", "ickd", "dkd")
# Loss weights, each refused below 0: a negative one would reward the student for moving away from the teacher (or
# the large image). A new method's weight joins them.
LOSS_WEIGHT_KEYS = ("AT.BETA", "SP.BETA", "ICKD.BETA", "DKD.ALPHA", "DKD.BETA", "FSR.ETA")
# TAS.FEAT_INTERP: how stage 2 resizes a student feature to the assistant's size (F.interpolate modes, with
# align_corners=False; "bilinear_align_corners": bilinear with align_corners=True, as the release's unused loss).
FKD_INTERP_MODES = ("bilinear", "bicubic", "nearest", "bilinear_align_corners")
PIPELINES = ("tensor", "pil", "device")
AMP_MODES = ("none", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
DEVICES = ("auto", "cpu", "cuda")
LESSEN_TYPES = (0, 1, 2, 3, 4, 5)
# DATA.LESSEN_TYPE (PIL resample codes) -> F.interpolate mode of the batched pipelines. PIL's nearest samples pixel
# centres, which is torch's "nearest-exact"; PIL's box filter is an area average. Lanczos (1) and hamming (5)
# have no F.interpolate equivalent and need DATA.PIPELINE "pil".
TENSOR_INTERPOLATION = {0: "nearest-exact", 2: "bilinear", 3: "bicubic", 4: "area"}
# The shorter side the published teachers and distillation configs resize to (their RESIZE_SIZE).
DEFAULT_CACHE_SIZE = 256


def get_cfg() -> CfgNode:
    """Return a fresh, unfrozen copy of the default config."""
    return _C.clone()


_OVERRIDES_EPILOG = ("KEY VALUE overrides set config keys (lib/config/defaults.py), e.g. SOLVER.START_LR 0.01;\n"
                     "flags may stand anywhere among them.")
_TRAINING_EPILOG = (f"Outputs go under BASIC.OUTPUT_ROOT (default {_C.BASIC.OUTPUT_ROOT}): "
                    "<OUTPUT_ROOT>/<dataset>/<experiment>/.\n"
                    "Re-running the same command resumes an interrupted experiment; BASIC.FRESH_START True moves it "
                    "aside and starts over.")
# The spelling most command-line tools use; --config_file stays the documented one (the original release's).
_CONFIG_FILE_ALIAS = "--config-file"


def config_parser(description: str = "", trains: bool = True) -> ArgumentParser:
    """A parser of `--config_file FILE [KEY VALUE ...]`; a script with flags of its own adds them to it.

    `trains`: the script trains an experiment, so its help also says how re-running resumes and where outputs go.
    """
    epilog = f"{_OVERRIDES_EPILOG}\n\n{_TRAINING_EPILOG}" if trains else _OVERRIDES_EPILOG
    parser = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=epilog)
    parser.add_argument("--config_file", type=nonempty, required=True, metavar="FILE",
                        help=f"YAML config file ({_CONFIG_FILE_ALIAS} also works)")
    parser.trains = trains  # (parse_args hands it on to load_config)
    parser.twice_hints["config_file"] = "give one config file (a KEY VALUE override changes a single key)"
    return parser


def parse_args(argv: Sequence[str] | None = None, description: str = "",
               parser: ArgumentParser | None = None, trains: bool = True) -> argparse.Namespace:
    """Parse `--config_file FILE [KEY VALUE ...]`, the original release's command-line form; `args.opts` holds
    the KEY VALUE words in order (`trains`: see config_parser)."""
    parser = parser or config_parser(description, trains)
    if parser.usage is None:
        # argparse's own usage (every flag the script added, and only those) plus the overrides it does not parse.
        usage = parser.format_usage().removeprefix("usage: ").rstrip("\n")
        parser.usage = usage.replace("%", "%%") + " [KEY VALUE ...]"
    argv = sys.argv[1:] if argv is None else argv
    argv = [_canonical_flag(word) for word in argv]
    # Not a REMAINDER positional: users type the overrides before --config_file too, and a negative value
    # (BASIC.SEED -1, SOLVER.WEIGHT_DECAY -1e-4) must reach the config check rather than look like a flag.
    args, opts = parser.parse_known_args(argv)
    flags = [word for word in opts if word.startswith("--")]
    if flags:
        parser.error(f"unrecognized arguments: {' '.join(flags)}")
    args.opts = opts
    args.trains = getattr(parser, "trains", trains)
    return args


def _canonical_flag(word: str) -> str:
    """`--config-file[=FILE]` spelled as `--config_file[=FILE]`, so that help and errors name one flag."""
    if word == _CONFIG_FILE_ALIAS or word.startswith(_CONFIG_FILE_ALIAS + "="):
        return "--config_file" + word[len(_CONFIG_FILE_ALIAS):]
    return word


def load_config(args: argparse.Namespace, one_run: bool = False) -> CfgNode:
    """Merge the YAML file and the overrides into the defaults, check the result, and freeze it.

    `one_run`: the script trains one run whatever BASIC.NUM_RUNS says (the teacher's, the TAS assistant's); a
    BASIC.NUM_RUNS on the command line gets a note saying so (a config file's is that of the experiments it serves).
    """
    cfg = get_cfg()
    merge_file(cfg, args.config_file)
    merge_list(cfg, args.opts or [])
    check_cfg(cfg)
    # After the check, so that a refused config stays one line.
    lines = _repeated_overrides(args.opts or [])
    if 0 < cfg.DATA.CACHE_SIZE < cfg.DATA.CROP_SIZE and cfg.DATA.PIPELINE != "pil":  # (pil caches nothing)
        lines.append(f"warning: DATA.CACHE_SIZE {cfg.DATA.CACHE_SIZE} is below DATA.CROP_SIZE {cfg.DATA.CROP_SIZE}: "
                     "the training crops are cut from images cached smaller than a crop, and enlarged (0 caches "
                     f"them at the larger of DATA.RESIZE_SIZE and {DEFAULT_CACHE_SIZE})")
    overridden = set((args.opts or [])[0::2])
    if one_run and "BASIC.NUM_RUNS" in overridden and cfg.BASIC.NUM_RUNS != 1:
        lines.append(f"note: BASIC.NUM_RUNS {cfg.BASIC.NUM_RUNS} is ignored: {os.path.basename(sys.argv[0])} trains "
                     f"one run (seed BASIC.SEED {cfg.BASIC.SEED}); the *_5runs.py scripts train BASIC.NUM_RUNS "
                     "seeded runs")
    saved = getattr(args, "trains", True) and _is_saved_experiment_config(args.config_file)
    if saved and cfg.BASIC.FRESH_START and "BASIC.FRESH_START" not in overridden:
        # Saved True by a version before config.yaml kept it False (what a command did, not a setting).
        cfg.BASIC.FRESH_START = False
        lines.append(f"note: BASIC.FRESH_START True in {args.config_file} is not applied (saved there by an older "
                     "version, it would move that experiment aside and train it again); to start over, add "
                     "BASIC.FRESH_START True to the command")
    if saved and "BASIC.OUTPUT_ROOT" not in overridden:
        lines += _experiment_elsewhere(args.config_file, cfg)
    if not torchrun_rank_other_than_0():  # (under torchrun every rank loads the same config)
        for line in lines:
            print(line, file=sys.stderr, flush=True)
    cfg.freeze()
    _remember_command_line(cfg, frozenset(overridden))
    return cfg


# id(config) -> (the config, weakly; the keys its command line set): the configs load_config returned, and those
# made from them (pass_on_the_command_line).
_given: dict[int, tuple[weakref.ref, frozenset[str]]] = {}


def _remember_command_line(cfg: CfgNode, keys: frozenset[str]) -> None:
    for gone in [key for key, (ref, _) in _given.items() if ref() is None]:
        del _given[gone]
    _given[id(cfg)] = (weakref.ref(cfg), keys)


def given_on_the_command_line(cfg: CfgNode) -> frozenset[str]:
    """The keys that the command line set in `cfg`, a config load_config returned or one made from it (empty for
    any other): a key set there to its default value was asked for all the same."""
    entry = _given.get(id(cfg))
    return entry[1] if entry is not None and entry[0]() is cfg else frozenset()


def pass_on_the_command_line(source: CfgNode, made: CfgNode) -> CfgNode:
    """Let `made`, a config made from `source` (a TAS stage's, a benchmark pipeline's), say what `source`'s command
    line set (given_on_the_command_line); returns `made`."""
    _remember_command_line(made, given_on_the_command_line(source))
    return made


def _is_saved_experiment_config(config_file: str) -> bool:
    """Whether `config_file` is the config.yaml a training command saved in its experiment folder (inputs.json
    beside it)."""
    folder = os.path.dirname(os.path.abspath(config_file))
    return os.path.basename(config_file) == "config.yaml" and os.path.isfile(os.path.join(folder, "inputs.json"))


def _experiment_elsewhere(config_file: str, cfg: CfgNode) -> list[str]:
    """A note when the saved experiment's config.yaml `config_file` (<root>/<dataset>/<experiment>/config.yaml)
    names in BASIC.OUTPUT_ROOT another root than the one it sits in: a folder copied or moved elsewhere, which this
    command would not resume there (it trains into BASIC.OUTPUT_ROOT)."""
    folder = os.path.dirname(os.path.abspath(config_file))
    dataset_dir = os.path.dirname(folder)
    root, output_root = os.path.dirname(dataset_dir), resolve_path(cfg.BASIC.OUTPUT_ROOT)
    if os.path.basename(dataset_dir) != cfg.DATA.DATASET or os.path.realpath(root) == os.path.realpath(output_root):
        return []
    return [f"note: {config_file} is the saved config of the experiment in {folder}, under {root}; this command "
            f"writes its experiment under the BASIC.OUTPUT_ROOT that it names, {output_root}; to resume that folder "
            f"where it is now, add BASIC.OUTPUT_ROOT {root}"]


def resolve_path(path: str) -> str:
    """Resolve a config path: absolute paths stay, relative ones are taken from the repository root."""
    path = os.path.expanduser(path)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(REPO_ROOT, path))  # ./ckpt/ as ckpt


def merge_file(cfg: CfgNode, filename: str) -> None:
    """Merge a YAML file into `cfg`; every key must exist in the schema.

    A relative path is taken from the current folder, else from the repository root (as every path inside a
    config is), so the published commands also work from another folder.
    """
    if not os.path.isfile(filename) and os.path.isfile(resolve_path(filename)):
        filename = resolve_path(filename)
    if not os.path.exists(filename) or os.path.isdir(filename):  # a pipe (--config_file <(sed ...)) is read too
        require_file(filename, "config file", _near_config_files(filename))
    with open(filename, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if data.startswith(TORCH_FILE_STARTS):  # a zip archive or a pickle
            raise UserError(f"config file {filename} is a torch checkpoint, not a YAML config; give a YAML file "
                            "(configs/..., or an experiment's config.yaml) and the checkpoint to its key "
                            "(TEST.CHECKPOINT, MODEL.MODELDICT_T, ...)") from None
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"config file {filename} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); "
                        "save it as UTF-8") from None
    try:
        loaded = yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as err:
        dropped = "dropping the first's keys: merge them into one" if err.section else "dropping the first: keep one"
        raise UserError(f"config file {filename} sets {err.key} twice (lines {err.lines[0]} and {err.lines[1]}); YAML "
                        f"would keep only the second, {dropped}") from None
    except yaml.YAMLError as err:
        raise UserError(f"config file {filename} is not valid YAML{_yaml_problem(err, text)}") from None
    if loaded is None:  # every key would keep its default: a config that trains nothing the user chose
        raise UserError(f"config file {filename} holds no settings (it is empty or all comments); give one of the "
                        "configs under configs/ or a copy of one")
    if not isinstance(loaded, dict):
        raise UserError(f"config file {filename} must hold a mapping of sections, got {type(loaded).__name__}")
    for full_key, value in _flatten(loaded):
        _set(cfg, full_key, value, source=f"in {filename}")


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, lines: tuple[int, int], section: bool):
        super().__init__(f"duplicate key {key}")
        self.key, self.lines, self.section = key, lines, section


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise _DuplicateKey(key, (first_line[key], line), isinstance(value_node, yaml.MappingNode))
            except TypeError:  # an unhashable key: the base class reports it
                break
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _near_config_files(filename: str) -> str:
    """For a config file that is not there: the YAML files of its folder (from the current folder, else from the
    repository root, as merge_file looks) named like it (a typo, `.yam`, no extension) as "; did you mean ...?";
    else ""."""
    folder, name = os.path.split(filename)
    for base in dict.fromkeys((folder or os.curdir, resolve_path(folder or os.curdir))):
        try:
            names = [n for n in os.listdir(base) if n.endswith((".yaml", ".yml")) and n != name]  # (a dead link)
        except OSError:  # not there, not a folder, not readable
            continue
        near = [n for n in (name + ".yaml", name + ".yml") if n in names] or \
            difflib.get_close_matches(name, names, n=3, cutoff=0.9)
        if near:
            return f"; did you mean {' or '.join(os.path.join(folder, n) for n in near)}?"
    return ""


def _yaml_problem(err: yaml.YAMLError, text: str) -> str:
    """` at line L, column C: <problem>` (1-based) from a PyYAML error, whose str() spans several lines."""
    if isinstance(err, yaml.reader.ReaderError):  # a character YAML does not allow (a control character, ...)
        line = text.count("\n", 0, err.position) + 1
        column = err.position - text.rfind("\n", 0, err.position)
        return f" at line {line}, column {column}: {err.reason} (character #x{err.character:04x})"
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {getattr(err, 'problem', None) or first_line(err)}"


def merge_list(cfg: CfgNode, opts: Sequence[str]) -> None:
    """Merge `KEY VALUE` pairs; values are Python literals, or plain strings when they do not parse."""
    keys = set(_all_keys(cfg))
    upper = {key.upper() for key in keys}
    for word in opts:  # `SOLVER.NUM_EPOCHS=1`, as other tools take it: name it rather than the pairs it shifts
        key, equals, value = word.partition("=") if isinstance(word, str) else ("", "", "")
        if equals and key.strip().upper() in upper:
            raise UserError(f"write overrides as KEY VALUE with a space, {key.strip()} {value}, not {word}")
    for at in range(2, len(opts), 2):  # `DATA.DATADIR /my data/cub` unquoted: name the split path, not "data/cub"
        pieces = _split_string(cfg, opts, at, keys, upper)
        if pieces:
            key, spaced = opts[at - 2], " ".join(pieces)
            raise UserError(f"the shell split the value of {key} at its spaces: {spaced} came as {len(pieces)} "
                            f"words; put it in quotes, {key} \"{spaced}\"")
    for index in range(1, len(opts), 2):
        key, word = opts[index - 1], opts[index]
        # `SOLVER.LR_STEPS [3, 6]` reaches us as three words and shifts every later pair: name the split list,
        # not the word left over ("unknown config key 6]").
        pieces = _split_list(opts, index, keys)
        if pieces:
            spaced = " ".join(pieces)
            raise UserError(f"the shell split the value of {key} at its spaces: {spaced} came as {len(pieces)} "
                            f"words; write the list without spaces, {key} {''.join(pieces)}, or in quotes, "
                            f'{key} "{spaced}"')
        # A forgotten value shifts every later pair ("SOLVER.NUM_EPOCHS BASIC.NUM_RUNS 1"): blame the key that lost
        # its value, not the word left over at the end. No string key takes a dotted upper-case key as its value.
        if word in keys:
            if key not in keys:
                raise _unknown_key(cfg, key, "on the command line")
            raise UserError(f"config key {key} on the command line has no value (the next word, {word}, is a "
                            "config key); overrides come in KEY VALUE pairs")
    if len(opts) % 2:
        lone = opts[-1]
        hint = ""
        if isinstance(lone, str) and lone.endswith((".pth", ".pt")):  # `eval.py --config_file c.yaml run0/x.pth`
            hint = (f"; a checkpoint is given to a config key: TEST.CHECKPOINT {lone} (tools/eval.py), "
                    f"MODEL.MODELDICT_T {lone} (a teacher)")
        raise UserError(
            f"overrides come in KEY VALUE pairs; '{lone}' has no value "
            f"(got {len(opts)} words: {' '.join(map(str, opts))}){hint}"
        )
    for key, raw in zip(opts[0::2], opts[1::2]):
        _set(cfg, key, _parse_literal(raw), source="on the command line")


def _split_string(cfg: CfgNode, opts: Sequence[str], at: int, keys: set[str], upper: set[str]) -> list[str]:
    """The words from opts[at - 1] to the next config key, if opts[at], in a key's place, is no key nor like one
    (a misspelled key is named as such) and follows a string key's value: the rest of a path the shell split at
    its spaces (`upper`: the keys in upper case). Else []."""
    word, previous = opts[at], opts[at - 2]
    if not isinstance(word, str) or previous not in keys or not isinstance(cfg_value(cfg, previous), str) \
            or opts[at - 1] in keys:  # (a key without its value: the pairs' check names it)
        return []
    if "/" not in word and (re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+", word) or word.upper() in upper
                            or difflib.get_close_matches(word.upper(), upper, n=1, cutoff=0.6)):
        return []  # a key misspelt, named so by the pairs' check
    end = at
    while end < len(opts) and opts[end] not in keys:
        end += 1
    pieces = [str(piece) for piece in opts[at - 1:end]]
    if os.path.exists(resolve_path(" ".join(pieces))):
        return pieces
    # Words of their own: files (a shell glob's; a checkpoint given without its key, after another key's value),
    # numbers (a value too many).
    names_a_checkpoint = any(tag in previous for tag in ("CHECKPOINT", "MODELDICT", "PRETRAIN_FILE"))
    if any(os.path.exists(resolve_path(piece)) or _float_or_none(piece) is not None
           or (piece.endswith((".pth", ".pt")) and not names_a_checkpoint) for piece in pieces[1:]):
        return []
    return pieces


def _bracket_depth(text: str) -> int:
    return text.count("[") + text.count("(") - text.count("]") - text.count(")")


def _split_list(opts: Sequence[str], start: int, keys: set[str]) -> list[str]:
    """The words from `opts[start]` on that together close the bracket it opens, if the shell split a list value
    there (`[3,` `6]`); else []."""
    first = opts[start]
    # Callers in Python may pass values rather than words (MODEL.PRETRAIN False): no shell split those.
    if not isinstance(first, str) or not first.startswith(("[", "(")) or _bracket_depth(first) <= 0:
        return []
    depth = _bracket_depth(first)
    for end in range(start + 1, len(opts)):
        if not isinstance(opts[end], str) or opts[end] in keys:  # the list was never closed: a mistyped value
            return []
        depth += _bracket_depth(opts[end])
        if depth <= 0:
            return list(opts[start:end + 1])
    return []


def _repeated_overrides(opts: Sequence[str]) -> list[str]:
    """One warning line per key given more than once with different values (the last one wins)."""
    values: dict[str, list[str]] = {}
    for key, raw in zip(opts[0::2], opts[1::2]):
        values.setdefault(key, []).append(raw)
    lines = []
    for key, raws in values.items():
        if any(_parse_literal(raw) != _parse_literal(raws[-1]) for raw in raws):
            times = "twice" if len(raws) == 2 else f"{len(raws)} times"
            lines.append(f"warning: {key} is given {times} on the command line; using the last value, {raws[-1]}")
    return lines


def _flatten(tree: dict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, full + ".")
        else:
            yield full, value


def _parse_literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


def _all_keys(node: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.extend(_all_keys(value, full + ".") if isinstance(value, CfgNode) else [full])
    return keys


def _unknown_key(cfg: CfgNode, full_key: str, source: str) -> UserError:
    # Compared in upper case: `solver.num_epochs` is a typing slip of SOLVER.NUM_EPOCHS, not a stranger.
    by_upper = {key.upper(): key for key in _all_keys(cfg)}
    if full_key.upper() in by_upper:
        close = [by_upper[full_key.upper()]]
    else:
        close = [by_upper[key] for key in difflib.get_close_matches(full_key.upper(), by_upper, n=3, cutoff=0.6)]
    hint = f"; did you mean {', '.join(close)}?" if close else "; see lib/config/defaults.py for every key"
    return UserError(f"unknown config key {full_key} {source}{hint}")


def _set(cfg: CfgNode, full_key: str, value: Any, source: str) -> None:
    node = cfg
    parts = full_key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, CfgNode):
            raise _unknown_key(cfg, full_key, source)
        node = child
    leaf = parts[-1]
    if isinstance(node.get(leaf), CfgNode):
        if value is None:  # a section whose keys are all commented out
            return
        raise UserError(f"config key {full_key} {source} is a section, not a value; write its keys indented below "
                        f"it ({full_key}: then KEY: value on the next lines)")
    if leaf not in node:
        raise _unknown_key(cfg, full_key, source)
    node[leaf] = _coerce(node[leaf], value, full_key, source)


def _type_name(value: Any) -> str:
    return {bool: "a bool", int: "an int", float: "a float", str: "a string", list: "a list"}.get(
        type(value), type(value).__name__
    )


def _coerce(default: Any, value: Any, key: str, source: str) -> Any:
    """Return `value` converted to the type of `default`, or raise a UserError naming the key."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        # 50 is accepted where a float is expected (the original rejected it).
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"config key {key} {source} must be a finite number, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML (YAML 1.1) reads 1e-2, without a dot, as the string '1e-2'.
        if isinstance(value, str):
            number = _float_or_none(value)
            if number is not None:
                return number
    elif isinstance(default, int):
        whole = None
        if isinstance(value, int) and not isinstance(value, bool):
            whole = value
        elif isinstance(value, float) and value.is_integer():
            whole = int(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e3, without a dot, as the string '1e3' (as for floats)
            number = _float_or_none(value)
            if number is not None and number.is_integer():
                whole = int(number)
        if whole is not None:
            # Python's ints have no end, torch's and numpy's do: a size or count of 2**63 fails an epoch later.
            if abs(whole) >= 2**63:
                raise UserError(f"config key {key} {source} must be below 2**63 in size, got {whole}")
            return whole
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, list):
            if default and value:
                return [_coerce(default[0], item, key, source) for item in value]
            return value
    else:
        return value
    hint = "; write True or False" if isinstance(default, bool) else ""
    if isinstance(default, str) and isinstance(value, (int, float)):  # a folder named 2024, a "yes" YAML reads True
        hint = f"; quote it to keep it a string: {key} \"'{value}'\" on the command line, '{value}' in a YAML file"
    raise UserError(f"config key {key} {source} expects {_type_name(default)}, got {value!r} ({_type_name(value)})"
                    f"{hint}")


def _float_or_none(text: str) -> float | None:
    """The finite number `text` spells ('1e-2', ' 5 '), else None ('abc', 'nan' and 'inf' are no learning rates)."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _is_text(path: str) -> bool:
    """Whether `path` encodes as UTF-8 (a file name's bytes that are not arrive as lone surrogates)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_cfg(cfg: CfgNode) -> None:
    """Check allowed values once, after merging (architectures are checked when models are built)."""
    data = cfg.DATA
    _require(data.DATASET in DATASETS, f"DATA.DATASET must be one of {', '.join(DATASETS)}, got {data.DATASET!r}")
    _require(data.DATADIR != "", "DATA.DATADIR is empty; set it to the dataset folder (see data/README.md)")
    # An unset shell variable (BASIC.OUTPUT_ROOT "$OUT") would otherwise write beside the code.
    _require(cfg.BASIC.OUTPUT_ROOT.strip() != "",
             "BASIC.OUTPUT_ROOT is empty; set it to the folder that receives the experiments (default ckpt)")
    _require(_is_text(resolve_path(cfg.BASIC.OUTPUT_ROOT)),  # (a relative root inside a checkout of such a name too)
             f"BASIC.OUTPUT_ROOT {cfg.BASIC.OUTPUT_ROOT!r} holds bytes that are not UTF-8 text (a name made under "
             "another encoding), where tensorboard cannot write its logs; rename that folder or choose another")
    _require(data.NUM_CLASSES > 0, f"DATA.NUM_CLASSES must be positive, got {data.NUM_CLASSES}")
    _require(data.CROP_SIZE > 0 and data.RESIZE_SIZE > 0, "DATA.CROP_SIZE and DATA.RESIZE_SIZE must be positive")
    _require(data.RESIZE_SIZE >= data.CROP_SIZE,
             f"DATA.RESIZE_SIZE ({data.RESIZE_SIZE}) must be >= DATA.CROP_SIZE ({data.CROP_SIZE})")
    _require(data.LESSEN_RATIO >= 1.0, f"DATA.LESSEN_RATIO must be >= 1, got {data.LESSEN_RATIO}")
    _require(data.LESSEN_TYPE in LESSEN_TYPES,
             f"DATA.LESSEN_TYPE must be one of {LESSEN_TYPES} (PIL codes), got {data.LESSEN_TYPE}")
    _require(data.PIPELINE in PIPELINES, f"DATA.PIPELINE must be one of {', '.join(PIPELINES)}, got {data.PIPELINE!r}")
    _require(
        data.PIPELINE == "pil" or data.LESSEN_TYPE in TENSOR_INTERPOLATION,
        f"DATA.LESSEN_TYPE {data.LESSEN_TYPE} (lanczos/hamming) has no batched equivalent; use DATA.PIPELINE 'pil'",
    )
    _require(len(data.IMAGE_MEAN) == 3 and len(data.IMAGE_STD) == 3, "DATA.IMAGE_MEAN and DATA.IMAGE_STD need 3 values")
    _require(min(data.IMAGE_STD) > 0, f"DATA.IMAGE_STD must be positive (the images are divided by it), got "
                                      f"{list(data.IMAGE_STD)}")
    _require(max(map(abs, data.IMAGE_MEAN)) <= 1 and max(data.IMAGE_STD) <= 1,
             f"DATA.IMAGE_MEAN and DATA.IMAGE_STD are on the images' 0-1 scale (ImageNet's: [0.485, 0.456, 0.406] and "
             f"[0.229, 0.224, 0.225]), got {list(data.IMAGE_MEAN)} and {list(data.IMAGE_STD)} (the 0-255 scale?)")
    _require(data.GENERATE_PER_CLASS >= 1, f"DATA.GENERATE_PER_CLASS must be >= 1 (images per class in each split), "
                                           f"got {data.GENERATE_PER_CLASS}")
    _require(data.CACHE_SIZE >= 0, f"DATA.CACHE_SIZE must be >= 0 (0 = the larger of DATA.RESIZE_SIZE and "
                                   f"{DEFAULT_CACHE_SIZE}), got {data.CACHE_SIZE}")
    _require(len(data.GENERATE_IMAGE_SIZE) == 2 and 4 <= min(data.GENERATE_IMAGE_SIZE)
             and max(data.GENERATE_IMAGE_SIZE) <= 4096,
             f"DATA.GENERATE_IMAGE_SIZE must be [width, height], both 4 to 4096 pixels (CUB's and Aircraft's images "
             f"are about 500 x 375), got {data.GENERATE_IMAGE_SIZE}")
    _require(cfg.MODEL.KDTYPE in KDTYPES, f"MODEL.KDTYPE must be one of {', '.join(KDTYPES)}, got {cfg.MODEL.KDTYPE!r}")
    _require(cfg.BASIC.DEVICE in DEVICES, f"BASIC.DEVICE must be one of {', '.join(DEVICES)}, got {cfg.BASIC.DEVICE!r}")
    _require(cfg.BASIC.NUM_RUNS >= 1, f"BASIC.NUM_RUNS must be >= 1, got {cfg.BASIC.NUM_RUNS}")
    _require(cfg.BASIC.NUM_WORKERS >= 0, f"BASIC.NUM_WORKERS must be >= 0, got {cfg.BASIC.NUM_WORKERS}")
    # numpy takes 32-bit unsigned seeds, and run i of an experiment is seeded with SEED + i.
    max_seed = 2**32 - cfg.BASIC.NUM_RUNS
    _require(0 <= cfg.BASIC.SEED <= max_seed,
             f"BASIC.SEED must be between 0 and {max_seed} (2**32 - BASIC.NUM_RUNS), got {cfg.BASIC.SEED}")
    _require(cfg.TRAIN.AMP in AMP_MODES, f"TRAIN.AMP must be one of {', '.join(AMP_MODES)}, got {cfg.TRAIN.AMP!r}")
    _require(cfg.TRAIN.COMPILE_MODE in COMPILE_MODES,
             f"TRAIN.COMPILE_MODE must be one of {', '.join(COMPILE_MODES)}, got {cfg.TRAIN.COMPILE_MODE!r}")
    _require(cfg.TRAIN.COMPILE_BACKEND in COMPILE_BACKENDS, f"TRAIN.COMPILE_BACKEND must be one of "
             f"{', '.join(COMPILE_BACKENDS)}, got {cfg.TRAIN.COMPILE_BACKEND!r}")
    _require(cfg.TRAIN.COMPILE_MODE == "default" or cfg.TRAIN.COMPILE_BACKEND == "inductor",
             f"TRAIN.COMPILE_MODE {cfg.TRAIN.COMPILE_MODE} is a mode of the inductor backend, but "
             f"TRAIN.COMPILE_BACKEND is {cfg.TRAIN.COMPILE_BACKEND}; set TRAIN.COMPILE_MODE default or "
             "TRAIN.COMPILE_BACKEND inductor")
    _require(cfg.TRAIN.BATCH_SIZE > 0 and cfg.TEST.BATCH_SIZE > 0,
             "TRAIN.BATCH_SIZE and TEST.BATCH_SIZE must be positive")
    _require(cfg.SOLVER.NUM_EPOCHS > 0, f"SOLVER.NUM_EPOCHS must be positive, got {cfg.SOLVER.NUM_EPOCHS}")
    _require(cfg.SOLVER.START_LR > 0, f"SOLVER.START_LR must be positive, got {cfg.SOLVER.START_LR}")
    _require(cfg.SOLVER.WEIGHT_DECAY >= 0, f"SOLVER.WEIGHT_DECAY must be >= 0, got {cfg.SOLVER.WEIGHT_DECAY}")
    _require(0 <= cfg.SOLVER.MUMENTUM < 1, f"SOLVER.MUMENTUM must be in [0, 1) (SGD's momentum; 1 or more makes "
                                           f"the steps grow without end), got {cfg.SOLVER.MUMENTUM}")
    _require(min(cfg.SOLVER.LR_STEPS, default=1) >= 1, f"SOLVER.LR_STEPS must be epochs >= 1 (the learning rate "
                                                       f"decays after each), got {cfg.SOLVER.LR_STEPS}")
    _require(cfg.DKD.WARMUP >= 0, f"DKD.WARMUP must be >= 0, got {cfg.DKD.WARMUP}")
    _require(cfg.SOLVER.LR_DECAY_FACTOR > 0,
             f"SOLVER.LR_DECAY_FACTOR must be positive, got {cfg.SOLVER.LR_DECAY_FACTOR}")
    for key in ("KD.TEMP", "DKD.TEMP"):
        _require(cfg_value(cfg, key) > 0, f"{key} must be positive (the logits are divided by it), got "
                                          f"{cfg_value(cfg, key)}")
    _require(0 <= cfg.KD.ALPHA <= 1, f"KD.ALPHA must be between 0 and 1 (the cross-entropy gets 1 - KD.ALPHA), got "
                                     f"{cfg.KD.ALPHA}")
    for key in LOSS_WEIGHT_KEYS:
        _require(cfg_value(cfg, key) >= 0, f"{key} must be >= 0 (it weights a loss term), got {cfg_value(cfg, key)}")
    _require(cfg.BASIC.DISP_FREQ >= 1, f"BASIC.DISP_FREQ must be >= 1 (a progress line every that many steps), got "
                                       f"{cfg.BASIC.DISP_FREQ}")
    _require(cfg.BASIC.PARALLEL_RUNS >= 0, f"BASIC.PARALLEL_RUNS must be >= 0 (0 = one run per GPU), got "
                                           f"{cfg.BASIC.PARALLEL_RUNS}")
    tas = cfg.TAS
    _require(tas.STAGE1_KDTYPE in KDTYPES,
             f"TAS.STAGE1_KDTYPE must be one of {', '.join(KDTYPES)}, got {tas.STAGE1_KDTYPE!r}")
    _require(tas.FEAT_INTERP in FKD_INTERP_MODES,
             f"TAS.FEAT_INTERP must be one of {', '.join(FKD_INTERP_MODES)}, got {tas.FEAT_INTERP!r}")
    _require(all(w >= 0 for w in tas.FEAT_WEIGHTS),
             f"TAS.FEAT_WEIGHTS must be >= 0 (0 switches a feature off), got {list(tas.FEAT_WEIGHTS)}")
    _require(all(b >= 1 for b in tas.VIT_BLOCKS),
             f"TAS.VIT_BLOCKS are 1-based block numbers, got {list(tas.VIT_BLOCKS)}")


def small_crop_size(cfg: CfgNode) -> int:
    """The student's training crop: CROP_SIZE / LESSEN_RATIO (truncated, as the original)."""
    return int(cfg.DATA.CROP_SIZE / cfg.DATA.LESSEN_RATIO)


def small_resize_size(cfg: CfgNode) -> int:
    """The student's test resize (shorter side): RESIZE_SIZE / LESSEN_RATIO (truncated, as the original)."""
    return int(cfg.DATA.RESIZE_SIZE / cfg.DATA.LESSEN_RATIO)


def train_cache_size(cfg: CfgNode) -> int:
    """Shorter side of the tensor/device pipelines' training cache: DATA.CACHE_SIZE, or (0) the larger of
    RESIZE_SIZE and 256.

    Not RESIZE_SIZE alone: a student baseline at 56 px (RESIZE_SIZE 64) would then cut its 56 px crops from
    64 px images and upsample most of them, where the original release cuts them from the full-size JPEG and
    the distilled students from the teacher's 256 px images. From 256 px every student, baseline or distilled,
    crops the same images.
    """
    return cfg.DATA.CACHE_SIZE or max(cfg.DATA.RESIZE_SIZE, DEFAULT_CACHE_SIZE)


_ABSENT = object()  # cfg_value's answer for a key that a saved config lacks, told apart from a None value


def diff_cfg(saved: CfgNode, requested: CfgNode, ignore: Iterable[str] = ()) -> list[str]:
    """Keys whose values differ between two configs (e.g. a saved experiment and the requested one).

    A key the saved config lacks was added to the schema after it was written; it counts as its default, which by
    this project's rule reproduces what the code did before the key existed (lib/config/defaults.py's header), so
    an experiment started before an update resumes after it unless the command asks for another value.
    """
    ignore = set(ignore)
    out = []
    for key in _all_keys(requested):
        if key in ignore:
            continue
        a, b = cfg_value(saved, key, _ABSENT), cfg_value(requested, key)
        if a is _ABSENT:
            default = cfg_value(_C, key)
            if default != b:
                out.append(f"{key} (absent, i.e. the default {default!r} -> {b!r})")
        elif a != b:
            out.append(f"{key} ({a!r} -> {b!r})")
    return out


def cfg_value(cfg: CfgNode, full_key: str, absent: Any = None) -> Any:
    """The value of `full_key` (SECTION.KEY) in `cfg`; `absent` where the config lacks it (an older version's)."""
    node: Any = cfg
    for part in full_key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return absent
        node = node[part]
    return node
